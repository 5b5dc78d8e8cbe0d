"""The store: tables (sqlmodel) and the engine, migrated to the current schema on open.

SQLite (WAL) by default, PostgreSQL by URL. The schema is versioned with Alembic; the revisions in
``daemon/store/migrations/versions`` are the only way the schema changes, so upgrading the daemon upgrades a
store in place and never drops pairs.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import JSON, Column, Field, SQLModel

from daemon.errors import StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Chunk(SQLModel, table=True):
    __tablename__ = "chunks"
    id: str = Field(primary_key=True)
    text: str
    text_hash: str = Field(index=True)
    doc: str | None = None
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    first_seen: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    last_seen: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    removed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class FeedbackEvent(SQLModel, table=True):
    __tablename__ = "feedback_events"
    # Retrievals waiting for their label, by request id: the join's lookup (partial: labelled events,
    # nearly all of them, cost the ingest nothing here).
    __table_args__ = (sa.Index("ix_feedback_events_unlabeled", "request_id", sqlite_where=sa.text("kind = 'unlabeled'"),
                               postgresql_where=sa.text("kind = 'unlabeled'")),)
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(sa_type=sa.DateTime(timezone=True))  # no index: windows read event_counts
    query: str
    # The log line exactly as written (all fields, including any extra ones production adds);
    # query it with json_extract(raw, '$.expected_ids') on SQLite or raw->'expected_ids' on PostgreSQL.
    raw: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    request_id: str | None = None
    source: str | None = None
    kind: str = Field(max_length=16)  # "miss" | "hit" | "unlabeled" (until its label line is joined)
    rank: int | None = None  # 1-based rank of the best expected id in retrieved_ids; None for a miss
    file: str
    offset: int = Field(sa_type=sa.BigInteger)
    line_no: int = Field(sa_type=sa.BigInteger)
    cursor_id: int


class FeedbackLabel(SQLModel, table=True):
    """A label line: the chunks that answer the retrieval logged with ``request_id``.

    Stored when read; the join (daemon/ingest/labels.py) completes the unlabeled event with that request
    id into a hit or a miss and sets ``event_id``, in one transaction. A label whose retrieval has not
    arrived within ``ingest.label_wait_s`` goes to quarantine.
    """

    __tablename__ = "feedback_labels"
    # Labels still waiting for their retrieval (partial: joined ones, nearly all of them, are not in it).
    __table_args__ = (sa.Index("ix_feedback_labels_waiting", "id", sqlite_where=sa.text("event_id IS NULL"),
                               postgresql_where=sa.text("event_id IS NULL")),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: str
    ts: datetime = Field(sa_type=sa.DateTime(timezone=True))
    expected_ids: list[str] = Field(sa_column=Column(JSON, nullable=False))
    raw: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # the line as written
    source: str | None = None
    file: str
    offset: int = Field(sa_type=sa.BigInteger)
    line_no: int = Field(sa_type=sa.BigInteger)
    cursor_id: int
    event_id: int | None = Field(default=None, sa_type=sa.BigInteger)  # the event it completed; None: waiting
    joined_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class EventCount(SQLModel, table=True):
    """Events per UTC hour and kind, kept in step with feedback_events (same transaction).

    Miss-rate windows and metrics read this instead of scanning or indexing the events table.
    """

    __tablename__ = "event_counts"
    hour: str = Field(primary_key=True, max_length=13)  # "YYYY-MM-DD HH" (UTC)
    kind: str = Field(primary_key=True, max_length=16)
    count: int = 0


class TrainingPair(SQLModel, table=True):
    __tablename__ = "training_pairs"
    __table_args__ = (sa.UniqueConstraint("query_norm", "chunk_id", name="uq_pair_query_chunk"),)
    id: int | None = Field(default=None, primary_key=True)
    query: str  # the text as first seen
    query_norm: str
    chunk_id: str = Field(index=True)
    hard_negative_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    count: int = 1
    miss_count: int = 0
    hit_count: int = 0
    last_rank: int | None = None
    split: str = Field(max_length=8)  # "train" | "heldout"
    origin: str = Field(max_length=16)  # "failure" | "hit" | "synthetic"
    generator: str | None = None  # the model that wrote a synthetic question
    first_seen: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    last_seen: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class PendingPairs(SQLModel, table=True):
    """A committed batch whose training pairs are not yet in training_pairs.

    An ingest reader merges the pairs of many batches in memory and upserts each (query, chunk) once
    (upserts into random pages of training_pairs were half the cost of a backlog ingest when done per
    batch). Each batch commits its events with one of these rows; the fold deletes them in the
    transaction that upserts the merged pairs. Rows left by a killed reader name the events to
    re-read: ``daemon.ingest.pending.recover``.
    """

    __tablename__ = "pending_pairs"
    id: int | None = Field(default=None, primary_key=True)
    cursor_id: int
    first_event_id: int = Field(sa_type=sa.BigInteger)  # the batch's events: ids in this range...
    last_event_id: int = Field(sa_type=sa.BigInteger)
    start_offset: int = Field(sa_type=sa.BigInteger)  # ...of this cursor, at offsets in [start, end)
    end_offset: int = Field(sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class IngestCursor(SQLModel, table=True):
    __tablename__ = "ingest_cursors"
    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(unique=True, index=True)  # sha256 of the file's first line: follows renames and .gz
    path: str  # where it was last seen
    dev: int = Field(sa_type=sa.BigInteger)
    inode: int = Field(sa_type=sa.BigInteger)
    offset: int = Field(default=0, sa_type=sa.BigInteger)  # bytes of (decompressed) content consumed
    line_no: int = Field(default=0, sa_type=sa.BigInteger)
    complete: bool = False  # a compressed file read to its end: never read again
    size: int = Field(default=0, sa_type=sa.BigInteger)  # file size when last read
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class Quarantine(SQLModel, table=True):
    __tablename__ = "quarantine"
    id: int | None = Field(default=None, primary_key=True)
    file: str
    line_no: int = Field(sa_type=sa.BigInteger)
    offset: int = Field(sa_type=sa.BigInteger)
    reason: str
    raw: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    resolved_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class ModelVersion(SQLModel, table=True):
    """A model ragloop knows: the base it started from and every candidate it trained."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("kind", "version", name="uq_model_kind_version"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # "embedder" | "reranker"
    version: int
    path: str  # a local folder or a Hugging Face id
    # candidate -> serving | rejected -> retired; "refitted" in stores from before 2026-12-07 (its refit served instead)
    status: str = Field(max_length=16)
    base: str | None = None  # what it was trained from (path or "<kind> v<N>")
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    lineage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    status_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class IndexVersion(SQLModel, table=True):
    """One Qdrant collection built by ragloop, and where it is in its life."""

    __tablename__ = "index_versions"
    id: int | None = Field(default=None, primary_key=True)
    collection: str = Field(unique=True, index=True)
    alias: str
    version: int
    embedder_version: int
    embedder_path: str
    status: str = Field(max_length=16)  # building -> complete -> serving -> retired -> deleted | failed
    points: int = 0
    chunks: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    swapped_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class GateDecision(SQLModel, table=True):
    """What the gate decided about a candidate, with every figure behind it."""

    __tablename__ = "gate_decisions"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    candidate_version: int
    serving_version: int | None = None
    outcome: str = Field(max_length=16)  # promote | reject | refuse | undecided | forced | refit
    reason: str
    figures: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    fixed: list[str] = Field(sa_column=Column(JSON, nullable=False))
    broken: list[str] = Field(sa_column=Column(JSON, nullable=False))
    eval_pair_ids: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


def decision_figures(value: Any) -> dict[str, Any]:
    """A stored `gate_decisions.figures` as a dict (raw SQL on some backends returns JSON columns as text)."""
    return json.loads(value) if isinstance(value, str) else value or {}


def primary_metric(figures: dict[str, Any]) -> str:
    """The decision's primary metric without its set, e.g. "ndcg@10" for "heldout ndcg@10"."""
    return str(figures.get("metric", "")).removeprefix("heldout ")


class SynthRecord(SQLModel, table=True):
    """One synthesis call for one version (text hash) of a chunk, with its cost."""

    __tablename__ = "synth_records"
    id: int | None = Field(default=None, primary_key=True)
    chunk_id: str = Field(index=True)
    text_hash: str
    status: str = Field(max_length=8)  # done | empty | failed
    questions: int = 0
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True), index=True)


class ServiceState(SQLModel, table=True):
    """Small named facts the daemon reports (last hook result, heartbeat, ...)."""

    __tablename__ = "service_state"
    key: str = Field(primary_key=True)
    value: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


# service_state keys, named once: writers (cycle, serving, service) and readers (status, metrics, check).
LAST_CYCLE = "cycle.last"
HOOK_RESULT = "serving.on_promote"
HEARTBEAT = "service.heartbeat"
SCHEDULE = "service.schedule"
COUNTERS = "service.counters"
ENCODE_RATE = "index.encode_rate"
CORPUS_CHANGED = "corpus.changed"  # when chunks were last added, changed, removed or restored
INDEX_REFRESH_FAILED = "index.refresh_failed"  # the corpus change a refresh of the serving index failed on


def put_state(engine: Engine, key: str, value: dict[str, Any]) -> None:
    with write_tx(engine) as conn:
        put_state_in(conn, key, value)


def put_state_in(conn: sa.Connection, key: str, value: dict[str, Any]) -> None:
    """put_state inside the caller's transaction (the state changes with the rows it describes, or not at all)."""
    t = ServiceState.__table__
    if conn.execute(t.update().where(t.c.key == key).values(value=value, updated_at=utcnow())).rowcount == 0:
        conn.execute(t.insert().values(key=key, value=value, updated_at=utcnow()))


def get_state(engine: Engine, key: str) -> dict[str, Any] | None:
    t = ServiceState.__table__
    with engine.connect() as conn:
        return conn.scalar(sa.select(t.c.value).where(t.c.key == key))


def open_store(url: str, *, echo: bool = False, migrate: bool = True) -> Engine:
    """Create the engine for ``url`` and bring its schema to the current revision.

    Raises:
        StoreError: when the database cannot be reached or migrated, naming the URL (without password).
    """
    safe = sa.engine.make_url(url).render_as_string(hide_password=True)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, echo=echo, **_engine_options(url))
    try:
        if migrate:
            upgrade(engine)
        else:
            with engine.connect():
                pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the store at {safe}: {exc.orig}; check store.url") from None
    return engine


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


@contextmanager
def write_tx(engine: Engine) -> Iterator[sa.Connection]:
    """A transaction that intends to write.

    On SQLite it starts with BEGIN IMMEDIATE, taking the write lock up front: a deferred transaction
    that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT) when another writer committed in
    between, instead of waiting its turn.
    """
    with engine.connect() as conn:
        conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            yield conn


@sa.event.listens_for(Engine, "begin")
def _sqlite_begin(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")


@sa.event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_conn, _record) -> None:
    if type(dbapi_conn).__module__.startswith("sqlite3"):
        # SQLAlchemy emits BEGIN itself (above), so the driver's implicit transactions are off.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL: readers (status, search) never block the ingester. synchronous=NORMAL is durable
        # across process crashes (SIGKILL), which is what the exactly-once guarantee needs.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints fsync; at the default (1000 pages) a bulk ingest spent a third of its time there.
        cur.execute("PRAGMA wal_autocheckpoint=16384")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def _alembic_config(connection: sa.Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every pending migration in one transaction per revision."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
