"""Retention: old model folders go, what serves and what a rollback needs stay, and `ragloop status` shows the disk."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from daemon.errors import RegistryError
from daemon.models import apply_retention, registry
from daemon.observe import collect_status
from daemon.serve import promotion
from daemon.store import ModelVersion, utcnow

mv = ModelVersion.__table__


def version(engine, settings, kind, status, days_ago, *, lineage=None, outside=None):
    """A registered version with a real folder of 1 MiB, in ``status`` since ``days_ago`` days."""
    n = registry.next_version(engine, kind)
    folder = outside or settings.models_dir / kind / f"v{n}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 2**20)
    registry.register(engine, kind, str(folder), version=n, status=status, lineage=lineage)
    with engine.begin() as conn:
        conn.execute(mv.update().where(mv.c.kind == kind, mv.c.version == n)
                     .values(status_at=utcnow() - timedelta(days=days_ago)))
    return n, folder


def statuses(engine, kind):
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(mv.c.version, mv.c.status).where(mv.c.kind == kind)).all())


def test_retention_deletes_what_no_rollback_needs_and_keeps_the_rest(settings, engine, tmp_path):
    settings.retention.keep_previous = 2
    settings.retention.keep_rejected_days = 7
    E = registry.EMBEDDER
    base = version(engine, settings, E, "retired", 60, outside=tmp_path / "my-base")  # a configured base: not ours
    v = {name: version(engine, settings, E, status, days) for name, status, days in [
        ("old_retired", "retired", 40), ("docs_of_adapter", "retired", 30), ("prev2", "retired", 20),
        ("prev1", "retired", 10), ("old_rejected", "rejected", 9), ("old_refitted", "refitted", 8),
        ("new_rejected", "rejected", 1), ("waiting", "candidate", 0)]}
    serving, _ = version(engine, settings, E, "serving", 5, lineage={"documents": v["docs_of_adapter"][0]})
    rr_old, _ = version(engine, settings, registry.RERANKER, "retired", 30)
    rr_prev, _ = version(engine, settings, registry.RERANKER, "retired", 3)
    rr_serving, _ = version(engine, settings, registry.RERANKER, "serving", 1)

    with capture_logs() as cap:
        deleted = apply_retention(engine, settings)
    gone = {(d["kind"], d["version"]) for d in deleted}
    assert gone == {(E, v["old_retired"][0]), (E, v["old_rejected"][0]), (E, v["old_refitted"][0])}
    assert all(d["freed_mb"] == 1.0 for d in deleted)
    assert len([e for e in cap if e["event"] == "retention.deleted"]) == 3
    for name, (n, folder) in v.items():
        assert folder.exists() == ((E, n) not in gone), name
    assert base[1].exists() and statuses(engine, E)[base[0]] == "retired"  # never touched
    assert statuses(engine, E)[v["old_retired"][0]] == "deleted"
    assert statuses(engine, E)[serving] == "serving" and statuses(engine, registry.RERANKER) == {
        rr_old: "retired", rr_prev: "retired", rr_serving: "serving"}  # two previous rerankers: both kept
    assert apply_retention(engine, settings) == []  # idempotent

    # the rollback still has its model; a deleted version cannot be promoted and says why
    assert registry.last_retired(engine, E)["version"] == v["prev1"][0]
    with pytest.raises(RegistryError, match="deleted by retention"):
        promotion.promote(engine, settings, E, v["old_retired"][0])

    disk = collect_status(engine, settings)["disk_mb"]
    assert disk["models"] == pytest.approx(9.0, abs=0.1)  # 12 folders of 1 MiB under models/, 3 deleted
    assert disk["total"] >= disk["models"] + disk["store"]
