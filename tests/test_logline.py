import json
import random
from importlib import resources

import jsonschema
import pytest

from daemon.data import Limits, logline, parse_event
from daemon.errors import LogLineError

LIM = Limits(k=10, max_query_chars=200, max_ids=20, known_ids={"a", "b", "c", "d"})
GOOD = {"ts": "2026-11-21T10:00:00Z", "query": "how?", "expected_ids": ["a"], "retrieved_ids": ["b", "a"]}
SCHEMA = json.loads(resources.files("daemon.data").joinpath("schemas/feedback-v1.schema.json").read_text())


def test_hit_miss_and_rank():
    ev = parse_event(json.dumps(GOOD), LIM)
    assert (ev.kind, ev.rank, ev.ts) == ("hit", 2, "2026-11-21 10:00:00.000000")
    ev = parse_event(json.dumps({**GOOD, "retrieved_ids": ["b", "c"]}), LIM)
    assert (ev.kind, ev.rank) == ("miss", None)
    deep = ["d"] * 10 + ["a"]  # found, but below k
    ev = parse_event(json.dumps({**GOOD, "retrieved_ids": deep}), LIM)
    assert (ev.kind, ev.rank) == ("miss", 11)
    ev = parse_event(json.dumps({**GOOD, "expected_ids": ["c", "a"], "retrieved_ids": ["b", "a", "c"]}), LIM)
    assert ev.rank == 2


@pytest.mark.parametrize("ts,stored", [
    ("2026-11-21T10:00:00Z", "2026-11-21 10:00:00.000000"),
    ("2026-11-21T10:00:00.123456Z", "2026-11-21 10:00:00.123456"),
    ("2026-11-21T12:30:00+02:30", "2026-11-21 10:00:00.000000"),
    ("2026-11-21T10:00:00.5+00:00", "2026-11-21 10:00:00.500000"),
])
def test_timestamps_are_stored_as_utc(ts, stored):
    assert parse_event(json.dumps({**GOOD, "ts": ts}), LIM).ts == stored


@pytest.mark.parametrize("change,reason", [
    ({"ts": None}, 'missing field "ts"'),
    ({"ts": "yesterday"}, "not RFC 3339"),
    ({"ts": "2026-11-21T10:00:00"}, "no UTC offset"),
    ({"ts": 5}, 'field "ts" must be'),
    ({"query": ""}, 'field "query" must be a non-empty string'),
    ({"query": "x" * 201}, "over ingest.max_query_chars=200"),
    ({"expected_ids": []}, "at least 1 chunk id"),
    ({"expected_ids": "a"}, 'field "expected_ids" must be a list'),
    ({"expected_ids": ["a", 3]}, 'field "expected_ids" must be a list'),
    ({"retrieved_ids": [""]}, 'field "retrieved_ids" must be a list'),
    ({"retrieved_ids": ["a"] * 21}, "over ingest.max_ids=20"),
    ({"retrieved_scores": [1.0]}, "retrieved_scores"),
    ({"retrieved_scores": ["x", 1]}, "retrieved_scores"),
    ({"request_id": 7}, 'field "request_id" must be a string'),
    ({"query": "a\x00b"}, "NUL character"),
    ({"source": ["x"]}, 'field "source" must be a string'),
    ({"expected_ids": ["zzz"]}, "unknown expected id 'zzz'"),
])
def test_bad_fields_say_what_to_fix(change, reason):
    obj = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(LogLineError, match=reason.replace("(", r"\(").replace("[", r"\[")):
        parse_event(json.dumps(obj), LIM)


def test_not_json_and_not_object():
    with pytest.raises(LogLineError, match="not valid JSON"):
        parse_event(b"{oops", LIM)
    with pytest.raises(LogLineError, match="expected a JSON object, got list"):
        parse_event(b"[1]", LIM)


def test_a_retrieval_without_expected_ids_is_unlabeled_until_its_label_line():
    later = {k: v for k, v in GOOD.items() if k != "expected_ids"}
    ev = parse_event(json.dumps({**later, "request_id": "r1"}), LIM)
    assert (ev.kind, ev.rank, ev.expected_ids, ev.request_id) == ("unlabeled", None, [], "r1")
    label = parse_event(json.dumps({"ts": "2026-11-21T10:05:00Z", "request_id": "r1", "expected_ids": ["a"]}), LIM)
    assert label == logline.Label("2026-11-21 10:05:00.000000", "r1", ["a"], None)


@pytest.mark.parametrize("line,reason", [
    ({"ts": "2026-11-21T10:00:00Z", "query": "q", "retrieved_ids": ["a"]}, 'missing field "expected_ids" (or log'),
    ({"ts": "2026-11-21T10:00:00Z", "query": "q", "retrieved_ids": ["a"], "request_id": ""}, '"request_id" must be a'),
    ({"ts": "2026-11-21T10:00:00Z", "query": "q", "expected_ids": ["a"]}, 'missing field "retrieved_ids"'),
    ({"ts": "2026-11-21T10:00:00Z", "expected_ids": ["a"]}, 'missing field "query" (a label line'),
    ({"ts": "2026-11-21T10:00:00Z", "request_id": "r"}, 'missing field "query" (a label line'),
    ({"ts": "2026-11-21T10:00:00Z", "request_id": "r", "expected_ids": ["zzz"]}, "unknown expected id 'zzz'"),
    ({"ts": "2026-11-21T10:00:00Z", "request_id": "r", "expected_ids": []}, "at least 1 chunk id"),
    ({"ts": "2026-11-21", "request_id": "r", "expected_ids": ["a"]}, "no UTC offset"),
])
def test_unlabeled_events_and_labels_say_what_to_fix(line, reason):
    with pytest.raises(LogLineError, match=reason.replace("(", r"\(").replace('"', '"')):
        parse_event(json.dumps(line), LIM)


def _mutate(rng: random.Random) -> dict:
    obj = dict(GOOD, retrieved_scores=[0.9, 0.8], request_id="r", source="s")
    shape = rng.random()
    if shape < 0.2:  # a label line
        obj = {"ts": obj["ts"], "request_id": "r", "expected_ids": ["a"], "source": "s"}
    elif shape < 0.4:  # a retrieval whose label comes later
        del obj["expected_ids"]
    key = rng.choice(list(obj))
    obj[key] = rng.choice([None, 1, 2.5, "", "x", [], ["a"], [1], {}, True, "2026-11-21T10:00:00Z"])
    if rng.random() < 0.3:
        obj.pop(rng.choice(list(obj)))
    return obj


def test_validator_agrees_with_the_published_schema():
    """Every line the JSON Schema rejects, parse_event rejects too (and vice versa, for known ids)."""
    lim = Limits(k=10, max_query_chars=10_000, max_ids=10_000, known_ids=None)
    checker = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    rng = random.Random(7)
    disagreements = []
    for _ in range(3000):
        obj = _mutate(rng)
        schema_ok = checker.is_valid(obj)
        try:
            parse_event(json.dumps(obj), lim)
            ours = True
        except LogLineError:
            ours = False
        # The schema cannot say "scores as long as ids" or "ts has an offset"; ours is stricter there.
        if schema_ok != ours and not (schema_ok and not ours and _stricter_rule(obj)):
            disagreements.append(obj)
    assert disagreements == []


def _stricter_rule(obj: dict) -> bool:
    scores, ids = obj.get("retrieved_scores"), obj.get("retrieved_ids")
    return (isinstance(scores, list) and isinstance(ids, list) and len(scores) != len(ids)) or (
        isinstance(obj.get("query"), str) and obj["query"].isspace())


def _outcome(parse, line, lim):
    try:
        return parse(line, lim)
    except LogLineError as exc:
        return str(exc)


def test_typed_fast_path_agrees_with_the_reference_path():
    """parse_event decodes typed (msgspec) and falls back to the generic path only to explain a failure:
    both must give the same event, or the same reason, for every line."""
    lim = Limits(k=10, max_query_chars=64, max_ids=5, known_ids={"a", "b", "c"})
    rng = random.Random(11)
    lines = [json.dumps(_mutate(rng)) for _ in range(3000)]
    lines += ['{"ts": "2026-11-21T10:00:00Z", "query": "q\\ud800", "expected_ids": ["a"], "retrieved_ids": []}',
              '{"ts": "2026-11-21T10:00:00Z", "query": "q", "expected_ids": ["a"], "retrieved_ids": [], '
              '"retrieved_scores": [1e400]}',
              '{"ts": "2026-11-21T10:00:00Z", "query": "q", "query": 5, "expected_ids": ["a"], "retrieved_ids": []}',
              '{"ts": "2026-11-21T10:00:00Z", "query": "q", "expected_ids": ["a"], "retrieved_ids": ["a"], '
              '"retrieved_scores": [true]}', "[]", "", "{", "\x00", '"str"']
    outcomes = [(_outcome(parse_event, line, lim), _outcome(logline._parse_untyped, line, lim)) for line in lines]
    assert [(line, a, b) for line, (a, b) in zip(lines, outcomes) if a != b] == []
    assert sum(isinstance(a, str) for a, _ in outcomes) > 500 and sum(not isinstance(a, str) for a, _ in outcomes) > 50
