"""The store: tables, the engine (SQLite or PostgreSQL by URL), service state, and the schema's migrations."""

from daemon.store.db import (COUNTERS, ENCODE_RATE, HEARTBEAT, HOOK_RESULT, LAST_CYCLE, MIGRATIONS_DIR, SCHEDULE, Chunk,
                             EventCount, FeedbackEvent, FeedbackLabel, GateDecision, IndexVersion, IngestCursor, ModelVersion,
                             PendingPairs, Quarantine, ServiceState, SQLModel, SynthRecord, TrainingPair,
                             current_revision, decision_figures, get_state, open_store, primary_metric, put_state,
                             upgrade, utcnow, write_tx)

__all__ = ["Chunk", "FeedbackEvent", "FeedbackLabel", "EventCount", "TrainingPair", "PendingPairs", "IngestCursor", "Quarantine",
           "ModelVersion", "IndexVersion", "GateDecision", "SynthRecord", "ServiceState", "SQLModel",
           "MIGRATIONS_DIR", "LAST_CYCLE", "HOOK_RESULT", "HEARTBEAT", "SCHEDULE", "COUNTERS", "ENCODE_RATE",
           "open_store", "write_tx", "get_state", "put_state", "utcnow", "upgrade", "current_revision",
           "decision_figures", "primary_metric"]
