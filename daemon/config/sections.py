"""Settings sections of the stages other than training: one pydantic model per ``config.toml`` table."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description='one of "debug", "info", "warning", "error"'
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description='"auto" (console on a TTY, JSON lines otherwise), "json" or "console"'
    )
    log_queries: bool = Field(
        False, description="true to include user query text in log events (false keeps it out of logs)"
    )


class StoreSettings(Section):
    url: str = Field(
        "",
        description='SQLAlchemy URL, e.g. "postgresql+psycopg://user@host/db"; empty means SQLite '
        "at <state_dir>/ragloop.db",
    )
    echo: bool = Field(False, description="true to log every SQL statement (debugging only)")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql")):
            raise ValueError('must start with "sqlite:///" or "postgresql+psycopg://"')
        return v


class IngestSettings(Section):
    paths: list[str] = Field(
        default_factory=lambda: ["examples/feedback.jsonl"],
        description='list of glob patterns, e.g. ["/var/log/rag/feedback-*.jsonl*"]; rotated .gz '
        "files matching a pattern are read once, completely",
    )
    k: int = Field(
        10, ge=1, le=1000, description="an event is a miss when no expected id is in retrieved_ids[:k]; 1..1000"
    )
    batch_lines: int = Field(
        10000, ge=1, le=1_000_000, description="lines per transaction (offset committed with the rows); 1..1000000"
    )
    pair_fold_lines: int = Field(
        100_000, ge=1, description="each reader merges its batches' training pairs in memory and writes them "
        "to training_pairs once per this many lines (and at its last batch); larger windows write fewer rows "
        "but hold more in memory; at least 1",
    )
    workers: int = Field(
        0, ge=0, le=64, description="processes that parse and commit a large backlog in turn; 0: one per core "
        "(at most 4); 1: read in this process only",
    )
    max_line_bytes: int = Field(
        65536, ge=256, description="longer lines are quarantined unread; at least 256"
    )
    max_query_chars: int = Field(4096, ge=1, description="longer queries are quarantined; at least 1")
    max_ids: int = Field(
        1000, ge=1, description="more expected_ids or retrieved_ids than this is quarantined; at least 1"
    )
    require_known_ids: bool = Field(
        True,
        description="true quarantines events whose expected ids are not in the corpus "
        "(replay them with `ragloop quarantine retry` after loading the chunks)",
    )
    quarantine_raw_chars: int = Field(
        2000, ge=0, description="how much of a bad line is kept in quarantine; 0 or more"
    )
    label_wait_s: float = Field(
        7 * 86400.0, gt=0, description="a label line whose retrieval (the unlabeled event with its request_id) "
        "has not been read this many seconds after the label is quarantined, with the reason; default 7 days",
    )


_METRIC = Literal["hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10"]


class GateSettings(Section):
    heldout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of distinct queries held out from training once traffic is large, 0..1"
    )
    heldout_target: int = Field(
        100, ge=0, description="held-out queries to reach while traffic is small, by holding out a larger share "
        "(at most heldout_max_fraction); 0: always heldout_fraction")
    heldout_max_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="the largest share held out while traffic is small, 0..1")

    embedder_metric: _METRIC = Field(
        "ndcg@10", description='primary held-out metric for the embedder: "ndcg@10" (graded, the most power at small n '
        'on both benchmarks), "mrr@10", or "hit@1", "hit@3", "hit@5", "hit@10"')
    reranker_metric: _METRIC = Field("ndcg@10", description='primary held-out metric after reranking, e.g. "ndcg@10"')
    min_gain: float = Field(0.01, ge=0, lt=1, description="the observed primary gain must be at least this, 0..1")
    guard_metrics: list[_METRIC] = Field(
        ["ndcg@10", "hit@10"], description='guard-set metrics that can veto, e.g. ["ndcg@10", "hit@10"]')
    guard_margin: float = Field(
        0.02, ge=0, lt=1, description="a guard veto needs evidence that a guard metric fell more than this, 0..1")
    permutation_samples: int = Field(
        10000, ge=1000, le=1_000_000, description="random sign flips of the paired test (when not exact); 1000 or more")
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="one-sided confidence of each paired test (level 1 - confidence), e.g. 0.95")
    seed: int = Field(0, description="seed of the paired tests' sign flips (decisions are reproducible)")
    min_heldout: int = Field(
        20, ge=1, description="below this many held-out queries the gate refuses to decide, and a cycle trains no "
        "candidate (it waits, and says how many more queries it needs)")
    rerank_depth: int = Field(
        20, ge=10, le=1000, description="embedder candidates the reranker reorders, in the gate and in production "
        "(the manifest carries it); 10..1000")
    max_guard_synthetic: int = Field(
        300, ge=0, description="synthetic questions in the guard set (a stable sample); 0: none; each costs "
        "rerank_depth reranker scores per candidate"
    )

    def ingest_fraction(self) -> float:
        """Share new queries are provisionally held out at; each cycle returns the surplus to train."""
        return max(self.heldout_fraction, self.heldout_max_fraction) if self.heldout_target else self.heldout_fraction

    def effective_fraction(self, queries: int) -> float:
        """Held-out share at ``queries`` distinct real queries: heldout_target / queries, within
        [heldout_fraction, heldout_max_fraction]. It never rises as traffic grows, so a query only ever
        moves from held-out to train, never back (a model is never tested on what it was trained on)."""
        if not self.heldout_target or queries <= 0:
            return self.ingest_fraction()
        return min(self.ingest_fraction(), max(self.heldout_fraction, self.heldout_target / queries))


class QdrantSettings(Section):
    path: str = Field(
        "", description='folder for embedded Qdrant (local mode); empty means <state_dir>/qdrant. Ignored when url is set'
    )
    url: str = Field("", description='Qdrant server URL, e.g. "http://qdrant:6333"; API key from $QDRANT_API_KEY')
    alias: str = Field("chunks", pattern=r"^[A-Za-z0-9_-]+$",
                       description="the alias production queries; collections are named <alias>__v<N>")
    keep_versions: int = Field(2, ge=1, le=100, description="collections kept for rollback, the serving one included; 1..100")
    batch_size: int = Field(64, ge=1, le=4096, description="chunks embedded and upserted per batch; 1..4096")
    verify_sample: int = Field(20, ge=0, le=10000,
                               description="chunks that must find themselves at rank 1 before a swap; 0 disables")
    timeout_s: float = Field(10.0, gt=0, description="request timeout for a Qdrant server, seconds")
    lock_wait_s: float = Field(
        15.0, ge=0, description="how long to wait for the embedded store while another ragloop process has it open"
    )
    # New collections on a Qdrant server or cluster (local mode keeps one shard and ignores these but on_disk)
    shard_number: int = Field(1, ge=1, le=1000, description="shards of each new collection (a Qdrant cluster); 1..1000")
    replication_factor: int = Field(1, ge=1, le=100, description="copies of each shard (a Qdrant cluster); 1..100")
    on_disk: bool = Field(False, description="keep vectors on disk (memmap) instead of in RAM: large corpora")
    hnsw_m: int = Field(16, ge=0, le=512, description="HNSW graph degree of new collections; 0 disables the graph")
    hnsw_ef_construct: int = Field(100, ge=4, le=10000, description="HNSW build-time search width of new collections")
    upload_parallel: int = Field(
        1, ge=1, le=64, description="concurrent upload requests while re-indexing (a Qdrant server; local mode uses 1)"
    )


class IndexSettings(Section):
    encode_devices: list[str] = Field(
        default_factory=list, description='encode the corpus (re-index, mining, gate) in one process per device '
        '(sentence-transformers\' multi-process pool), e.g. ["cuda:0", "cuda:1"] or ["cpu", "cpu"]; empty: in process'
    )
    max_reindex_s: float = Field(
        3600.0, gt=0, description="in train.embedder.mode = \"auto\", a full fine-tune whose re-index would take "
        "longer than this (corpus size / the measured encode rate) is not trained; the query adapter is"
    )


class ServingSettings(Section):
    manifest_path: str = Field(
        "", description="where the serving manifest (JSON) is written after every swap; empty means <state_dir>/serving.json"
    )
    manifest_group: str = Field(
        "", description="group the manifest is given to (chgrp), so a service running as another user in that group "
        "can read it; empty: the daemon's own group (ragloop under the systemd unit)"
    )
    on_promote: list[str] = Field(
        default_factory=list,
        description='command run after every swap, with $RAGLOOP_MANIFEST set and "{manifest}" in an argument replaced '
        'by the manifest path, e.g. ["curl", "-fsS", "-X", "POST", "http://127.0.0.1:8080/reload"]; not needed by a '
        "service on ragloop_client, which follows the manifest itself",
    )
    on_promote_timeout_s: float = Field(60.0, gt=0, description="seconds before on_promote is killed")


DEFAULT_SYNTH_PROMPT = (
    "Generate 3-5 questions related to the chunk. Each question must be full and not require additional "
    "context. Answer with a numbered list of questions and nothing else."
)


class SynthSettings(Section):
    enabled: bool = Field(True, description="false turns synthesis off; it is also off while $ANTHROPIC_API_KEY is unset")
    model: str = Field("claude-haiku-4-5", min_length=1, description='Claude model id, e.g. "claude-haiku-4-5"')
    base_url: str = Field("", description="Messages API base URL; empty: the SDK's default (api.anthropic.com)")
    system_prompt: str = Field(DEFAULT_SYNTH_PROMPT, min_length=1, description="system prompt for each chunk")
    min_questions: int = Field(1, ge=1, le=20, description="fewer valid questions than this counts as empty output")
    max_questions: int = Field(5, ge=1, le=20, description="questions kept per chunk; 1..20")
    max_tokens: int = Field(400, ge=16, le=8192, description="max output tokens per call")
    concurrency: int = Field(4, ge=1, le=64, description="calls in flight at once; 1..64")
    timeout_s: float = Field(60.0, gt=0, description="seconds per API call before it counts as a timeout")
    max_retries: int = Field(4, ge=0, le=10, description="the SDK's retries with backoff on 429, 5xx and timeouts")
    batch_chunks: int = Field(200, ge=1, description="chunks per synthesis run (ragloop synth --limit overrides)")
    run_token_budget: int = Field(300_000, ge=0, description="input+output tokens one run may spend; 0: no limit")
    daily_token_budget: int = Field(3_000_000, ge=0, description="tokens per UTC day; 0: no limit")
    input_usd_per_mtok: float = Field(1.0, ge=0, description="price per million input tokens, for cost estimates")
    output_usd_per_mtok: float = Field(5.0, ge=0, description="price per million output tokens, for cost estimates")
    max_attempts: int = Field(3, ge=1, description="failed calls for a chunk before it is left alone")


class ScheduleSettings(Section):
    ingest_interval_s: float = Field(10.0, gt=0, description="seconds between ingest passes")
    retrain_cron: str = Field(
        "", description='cron expression for scheduled retraining, e.g. "0 3 * * *" (03:00 daily); empty: none'
    )
    min_new_pairs: int = Field(
        50, ge=1, description="retrain as soon as this many new train pairs arrived since the last cycle"
    )
    min_cycle_interval_s: float = Field(3600.0, ge=0, description="never start cycles more often than this")
    check_interval_s: float = Field(10.0, gt=0, description="seconds between checks for new pairs")
    synth_interval_s: float = Field(300.0, gt=0, description="seconds between synthesis batches, run when no cycle is")

    @field_validator("retrain_cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        if v:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as exc:
                raise ValueError(f"not a cron expression ({exc})") from None
        return v


class RetentionSettings(Section):
    keep_previous: int = Field(
        2, ge=1, description="model versions per kind kept after they stopped serving, newest first, so `ragloop "
        "rollback` (which needs the last one) and `ragloop promote --force` have them; older ones are deleted"
    )
    keep_rejected_days: float = Field(
        7.0, ge=0, description="days a rejected candidate's folder is kept for inspection (`ragloop "
        "eval`), then deleted; 0: at the end of the cycle that rejected it"
    )


class ServiceSettings(Section):
    shutdown_timeout_s: float = Field(60.0, gt=0, description="on SIGTERM, seconds to let running work stop cleanly")
    metrics_addr: str = Field(
        "", description='"127.0.0.1:9464" serves Prometheus metrics at /metrics; empty: off. Loopback only'
    )
    heartbeat_interval_s: float = Field(10.0, gt=0, description="seconds between heartbeats written to the store")
    heartbeat_max_age_s: float = Field(60.0, gt=0, description="`ragloop check` fails when the heartbeat is older")

    @field_validator("metrics_addr")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v:
            host, _, port = v.rpartition(":")
            if host.strip("[]") not in ("127.0.0.1", "::1", "localhost") or not port.isdigit():
                raise ValueError('must be a loopback "host:port" such as "127.0.0.1:9464"')
        return v
