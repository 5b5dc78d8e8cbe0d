import json

import pytest
import sqlalchemy as sa

from daemon.data import load_corpus
from daemon.errors import CorpusError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _chunks(engine):
    with engine.connect() as conn:
        return {r.id: (r.text, r.removed_at is None) for r in conn.execute(sa.text("SELECT * FROM chunks"))}


def test_load_reports_added_changed_unchanged_removed(tmp_path, engine):
    f = _write(tmp_path / "c.jsonl", [{"id": "a", "text": "A"}, {"id": "b", "text": "B", "doc": "d"},
                                       {"id": "c", "text": "C", "metadata": {"k": 1}}])
    r = load_corpus(engine, f)
    assert (r.added, r.changed, r.unchanged, r.removed) == (3, 0, 0, 0)
    f2 = _write(tmp_path / "c2.jsonl", [{"id": "a", "text": "A"}, {"id": "b", "text": "B changed"},
                                        {"id": "d", "text": "D"}])
    r = load_corpus(engine, f2)
    assert (r.added, r.changed, r.unchanged, r.removed) == (1, 1, 1, 1)
    got = _chunks(engine)
    assert got["b"] == ("B changed", True) and got["c"] == ("C", False) and got["d"] == ("D", True)
    r = load_corpus(engine, f, merge=True)  # brings c back, keeps d
    assert (r.added, r.changed, r.restored, r.removed) == (0, 1, 1, 0)
    assert _chunks(engine)["d"][1] is True


def test_bad_lines_load_nothing_and_name_every_line(tmp_path, engine):
    f = _write(tmp_path / "bad.jsonl", [
        {"id": "ok", "text": "fine"}, "not json", {"id": "x"}, {"id": "", "text": "t"},
        {"id": "ok", "text": "dup"}, {"id": "m", "text": "t", "metadata": [1]}, "[1, 2]",
    ])
    with pytest.raises(CorpusError) as exc:
        load_corpus(engine, f)
    lines = [n for n, _ in exc.value.problems]
    assert lines == [2, 3, 4, 5, 6, 7]
    msg = str(exc.value)
    assert "line 3: missing field \"text\"" in msg and "duplicate id \"ok\" (first on line 1)" in msg
    assert _chunks(engine) == {}
