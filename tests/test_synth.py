import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from daemon.data import upsert_chunks
from daemon.ingest import parse_questions, run_synthesis, synth_status

from fake_anthropic import FakeAnthropic, error, ok, questions_for
from helpers import example_chunks

KEY = "sk-ant-test-SECRET-0123456789"


@pytest.fixture
def chunks(engine):
    rows = example_chunks(6)
    upsert_chunks(engine, rows, mark_missing_removed=False)
    return rows


@pytest.fixture
def synth(settings, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    servers = []

    def start(behave=None, **kw):
        fake = FakeAnthropic(behave, **kw)
        servers.append(fake)
        settings.synth.base_url = fake.url
        settings.synth.max_retries = 2
        settings.synth.timeout_s = 5
        return fake

    yield start
    for s in servers:
        s.close()


def records(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT chunk_id, status, questions, input_tokens, output_tokens, cost_usd, error "
                                    "FROM synth_records ORDER BY id")).mappings().all()


def synthetic_pairs(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT query, chunk_id, split, generator FROM training_pairs "
                                    "WHERE origin = 'synthetic'")).mappings().all()


def test_parse_questions_is_tolerant_and_strict_where_it_matters():
    chunk = "Debian is a free operating system. It uses dpkg and apt."
    text = """Here are some questions:
1. What package tools does Debian use?
2) what package tools does Debian use
- Is Debian free to use and redistribute?
3. Debian is a free operating system.
4.
   Why?
Q5: How do I install software on a Debian system?"""
    qs = parse_questions(text, chunk, 5)
    assert qs == ["What package tools does Debian use?", "Is Debian free to use and redistribute?",
                  "How do I install software on a Debian system?"]
    assert parse_questions("", chunk, 5) == [] and parse_questions("No questions, sorry.", chunk, 5) == []
    assert len(parse_questions(questions_for({"messages": [{"content": "a b c d"}]}), chunk, 3)) == 3


def test_normal_answers_store_synthetic_pairs_and_costs_once(settings, engine, chunks, synth):
    fake = synth()
    rep = run_synthesis(engine, settings)
    assert (rep.chunks, rep.done, rep.failed, rep.questions) == (6, 6, 0, 24)
    assert rep.input_tokens == 6 * 120 and rep.output_tokens == 6 * 40
    assert rep.cost_usd == pytest.approx(6 * (120 * 1.0 + 40 * 5.0) / 1e6)
    pairs = synthetic_pairs(engine)
    assert len(pairs) == 24 and {p["split"] for p in pairs} == {"train"}
    assert {p["generator"] for p in pairs} == {"claude-haiku-4-5"}
    headers = fake.requests[0]["headers"]
    assert fake.requests[0]["path"] == "/v1/messages"
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")  # the SDK sent the key
    assert fake.requests[0]["body"]["system"].startswith("Generate 3-5 questions")
    assert run_synthesis(engine, settings).chunks == 0  # never twice for an unchanged chunk
    upsert_chunks(engine, [{**chunks[0], "text": chunks[0]["text"] + " Changed."}], mark_missing_removed=False)
    again = run_synthesis(engine, settings)
    assert (again.chunks, again.done) == (1, 1)
    st = synth_status(engine, settings)
    assert st["records"] == {"done": 7} and st["tokens_today"] == 7 * 160 and st["enabled"] is True


def test_429_and_500_are_retried_by_the_sdk_then_succeed(settings, engine, chunks, synth):
    script = {0: error(429, "rate_limit_error"), 1: error(500, "api_error"), 2: error(529, "overloaded_error")}
    fake = synth(lambda n, body: script.get(n) or ok(questions_for(body)))
    settings.synth.concurrency, settings.synth.max_retries = 1, 3
    rep = run_synthesis(engine, settings, limit=2)
    assert (rep.done, rep.failed) == (2, 0)
    assert len(fake.requests) == 5  # three errors retried, two successes
    assert [r["status"] for r in records(engine)] == ["done", "done"]


def test_timeouts_fail_the_chunk_and_it_is_retried_later_up_to_max_attempts(settings, engine, chunks, synth):
    synth(lambda n, body: (200, {}, {}, 2.0))  # slower than the client's timeout, every time
    settings.synth.timeout_s, settings.synth.max_retries, settings.synth.max_attempts = 0.3, 1, 2
    rep = run_synthesis(engine, settings, limit=1)
    assert (rep.done, rep.failed) == (0, 1)
    rec = records(engine)[0]
    assert rec["status"] == "failed" and "Timeout" in rec["error"]
    assert run_synthesis(engine, settings, limit=1).failed == 1  # tried again
    assert [r["status"] for r in records(engine)].count("failed") == 2
    left = run_synthesis(engine, settings, limit=1)
    assert left.chunks == 1 and records(engine)[-1]["chunk_id"] != rec["chunk_id"]  # the first one is left alone


def test_malformed_and_empty_output_is_recorded_without_pairs(settings, engine, chunks, synth):
    answers = ["", "I cannot help with that.", "1.\n2.\n3.", chunks[3]["text"]]
    synth(lambda n, body: ok(answers[n % len(answers)]))
    settings.synth.concurrency = 1
    rep = run_synthesis(engine, settings, limit=4)
    assert (rep.done, rep.empty, rep.questions) == (0, 4, 0)
    assert [r["status"] for r in records(engine)] == ["empty"] * 4
    assert synthetic_pairs(engine) == []
    assert run_synthesis(engine, settings, limit=4).chunks == 2  # empty is final for that text: only the rest


def test_budget_running_out_mid_batch_stops_cleanly_and_resumes(settings, engine, chunks, synth):
    synth()
    settings.synth.concurrency = 1
    settings.synth.run_token_budget = 400  # 160 tokens a call; a call starts only while under budget: 3 calls
    rep = run_synthesis(engine, settings)
    assert rep.done == 3 and "run_token_budget=400" in rep.stopped
    assert len(records(engine)) == 3
    settings.synth.run_token_budget = 0
    assert run_synthesis(engine, settings).done == 3  # the rest, next run
    settings.synth.daily_token_budget = 500
    upsert_chunks(engine, [{**c, "text": c["text"] + " v2"} for c in chunks], mark_missing_removed=False)
    rep = run_synthesis(engine, settings)
    assert rep.done == 0 and "daily_token_budget=500" in rep.stopped  # today's 960 tokens already spent


def test_the_api_key_never_appears_in_logs(settings, engine, chunks, synth, capsys):
    synth(lambda n, body: error(401, "authentication_error") if n == 0 else ok(questions_for(body)))
    with capture_logs() as cap:
        run_synthesis(engine, settings)
    out = capsys.readouterr()
    assert KEY not in repr(cap) and KEY not in out.out and KEY not in out.err
    assert KEY not in repr(records(engine))


def test_without_a_key_synthesis_is_off_and_says_why(settings, engine, chunks, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    rep = run_synthesis(engine, settings)
    assert rep.chunks == 0 and rep.stopped == "off: ANTHROPIC_API_KEY is not set in the environment"
    assert synth_status(engine, settings)["enabled"] is False


def test_the_daemon_says_once_that_synthesis_is_off(settings, monkeypatch):
    from daemon.service import Daemon

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    d = Daemon(settings)
    with capture_logs() as cap:
        assert [d._synth_enabled() for _ in range(5)] == [False] * 5
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        assert d._synth_enabled() is True
    events = [e["event"] for e in cap]
    assert events == ["synth.off", "synth.on"] and KEY not in repr(cap)
