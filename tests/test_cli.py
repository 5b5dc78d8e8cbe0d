"""The command line on bad arguments: every command answers with one `ragloop: ...` line that says what to do
and a non-zero exit code, never a traceback; and nothing is written by a refused command."""

import json

import pytest

from daemon.cli import main
from daemon.store import open_store


@pytest.fixture
def config(tmp_path, db_url):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[store]\nurl = "{db_url}"\n[train]\ndevice = "cpu"\n')
    return str(cfg)


BAD = [
    (["promote", "embedder", "99", "--force"], "no embedder version 99; `ragloop models` lists"),
    (["promote", "reranker", "3", "--force"], "no reranker version 3; `ragloop models` lists"),
    (["rollback", "reranker"], "no reranker to roll back"),
    (["rollback", "embedder"], "nothing is indexed yet"),
    (["eval", "embedder", "99"], "no embedder version 99; `ragloop models` lists"),
    (["eval", "reranker", "7"], "no reranker version 7; `ragloop models` lists"),
    (["index", "rollback"], "nothing is indexed yet"),
    (["search", "how do I install it?"], "nothing is indexed yet: run `ragloop index build`"),
    (["corpus", "load", "/nonexistent/corpus.jsonl"], "/nonexistent/corpus.jsonl"),
    (["corpus", "sync", "--from-qdrant", "nope"], "no collection 'nope'"),
    (["report", "-o", "/nonexistent/dir/report.html"], "pass -o with a writable path"),
    (["index", "build"], "the corpus is empty: load chunks with `ragloop corpus load FILE.jsonl` first"),
]


@pytest.mark.parametrize("argv,says", BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
def test_a_bad_argument_gets_one_line_that_says_what_to_do(config, capsys, argv, says):
    code = main(["-c", config, *argv])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("ragloop: ")]  # the rest: the JSON log
    assert code != 0
    assert len(said) == 1 and says in said[0], err
    assert "Traceback" not in err


def test_a_missing_config_file_is_refused_with_exit_2(tmp_path, capsys):
    assert main(["-c", str(tmp_path / "missing.toml"), "status"]) == 2
    assert "file not found; pass --config PATH or create config.toml" in capsys.readouterr().err


def test_a_refused_promotion_writes_no_decision(config, db_url, capsys):
    assert main(["-c", config, "promote", "embedder", "5", "--force"]) == 1
    engine = open_store(db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gate_decisions").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM model_versions WHERE status = 'serving'").scalar() <= 1
    engine.dispose()


def test_a_reranker_path_that_is_no_model_is_refused_as_an_embedder_path_is(tmp_path):
    from daemon.models import ModelError, load_embedder, load_reranker

    for load, kind in ((load_embedder, "embedder"), (load_reranker, "reranker")):
        with pytest.raises(ModelError, match=f"{kind} '/nonexistent/model' is neither a folder nor a Hugging Face id; "
                                              f"check train.{kind}.base"):
            load("/nonexistent/model", "cpu")
        (tmp_path / kind).mkdir()
        with pytest.raises(ModelError, match=f"cannot load {kind} "):
            load(str(tmp_path / kind), "cpu")  # a folder, but no model in it


def test_config_is_taken_after_the_subcommand_too_and_version_answers(config, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # no ./config.toml to fall back on
    assert main(["status", "-c", config]) == 0
    assert "never ran on this store" in capsys.readouterr().out and not (cwd / "state").exists()
    assert main(["corpus", "load", "-c", config, str(tmp_path / "none.jsonl")]) != 0
    assert "none.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("ragloop ")


@pytest.mark.slow
def test_search_loads_once_for_many_queries_and_a_closed_pipe_exits_quietly(config, tmp_path, minilm):
    import subprocess
    import sys

    from daemon.config import load_settings
    from daemon.serve import build_index

    from helpers import example_chunks

    settings = load_settings(config)
    engine = open_store(settings.store_url)
    from daemon.data import upsert_chunks

    upsert_chunks(engine, example_chunks(40), mark_missing_removed=False)
    build_index(engine, settings, model=minilm)
    engine.dispose()
    cli = [sys.executable, "-m", "daemon.cli", "search", "-c", config, "--json", "-k", "10", "-"]
    queries = "".join(f"how do I change setting {i}?\n" for i in range(40))
    proc = subprocess.Popen(cli, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(queries.encode())
    proc.stdin.close()
    first = proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert json.loads(first)["query"] == "how do I change setting 0?" and len(json.loads(first)["hits"]) == 10
    assert "Traceback" not in err and "BrokenPipe" not in err and "Loading weights" not in err, err


def test_status_without_a_config_says_so_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGLOOP_CONFIG", raising=False)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "no config file" in err and "-c /etc/ragloop/config.toml" in err
    assert list(tmp_path.iterdir()) == []  # no ./state from a look
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "s"}"\n')
    assert main(["status", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.startswith(f"Config: {cfg}    state: {tmp_path / 's'}")
