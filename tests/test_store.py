from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from daemon.store import MIGRATIONS_DIR, SQLModel, current_revision, open_store, upgrade


def test_migrations_build_exactly_the_models(engine):
    """The migration chain and the sqlmodel tables must agree, or an upgrade would drift."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_single_head_and_store_at_head(engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1
    assert current_revision(engine) == heads[0]


def test_reopening_upgrades_in_place_without_losing_pairs(settings, engine):
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO training_pairs (query, query_norm, chunk_id, hard_negative_ids, count, miss_count,"
            " hit_count, split, origin, first_seen, last_seen) VALUES ('q', 'q', 'c1', '[]', 3, 3, 0, 'train',"
            " 'failure', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
        )
    engine.dispose()
    again = open_store(settings.store_url)
    upgrade(again)
    with again.connect() as conn:
        assert conn.execute(sa.text("SELECT count, origin FROM training_pairs")).one() == (3, "failure")
    again.dispose()


def test_sqlite_uses_wal(tmp_path):
    eng = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    eng.dispose()


def test_unreachable_postgres_is_a_clear_error():
    import pytest

    from daemon.errors import StoreError

    with pytest.raises(StoreError, match="cannot open the store at postgresql"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_upgrade_from_the_first_schema_keeps_pairs(db_url):
    """A store created by an older ragloop (revision 0001) is upgraded in place, pairs intact."""
    if db_url.startswith("sqlite:///"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    eng = sa.create_engine(db_url)
    upgrade(eng, "0001")
    with eng.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO training_pairs (query, query_norm, chunk_id, hard_negative_ids, count, miss_count,"
            " hit_count, split, origin, first_seen, last_seen) VALUES ('old q', 'old q', 'c9', '[\"c1\"]', 5, 2, 3,"
            " 'heldout', 'failure', '2026-01-01 00:00:00', '2026-02-01 00:00:00')"
        )
    eng.dispose()
    migrated = open_store(db_url)
    assert current_revision(migrated) != "0001"
    with migrated.connect() as conn:
        row = conn.execute(sa.text("SELECT query, count, split, origin FROM training_pairs")).one()
        assert tuple(row) == ("old q", 5, "heldout", "failure")
        assert conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar() == 0
    migrated.dispose()
