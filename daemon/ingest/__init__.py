"""Ingest: feedback logs into events and training pairs exactly once, and Claude's synthetic questions."""

from daemon.ingest.batch import Prepared, ReadSpec, batches
from daemon.ingest.commit import Committer
from daemon.ingest.quarantine import quarantined, retry_quarantine
from daemon.ingest.reader import IngestReport, claim_cursor, fingerprint, ingest_once, limits_from
from daemon.ingest.synth import disabled_reason, parse_questions, pending_chunks, run_synthesis, synth_status
from daemon.ingest.workers import PositionalReader

__all__ = ["IngestReport", "ingest_once", "limits_from", "fingerprint", "claim_cursor",
           "Prepared", "ReadSpec", "batches", "Committer", "PositionalReader", "quarantined", "retry_quarantine",
           "run_synthesis", "synth_status", "pending_chunks", "parse_questions", "disabled_reason"]
