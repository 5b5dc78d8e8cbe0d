"""Data: the feedback log format, training pairs and their train/held-out split, and the corpus."""

from daemon.data.corpus import CorpusReport, known_chunk_ids, load_corpus, text_hash, upsert_chunks
from daemon.data.logline import UNKNOWN_ID, Event, Limits, best_rank, parse_event, ts_text
from daemon.data.pairs import PairBatch, QueryKeys, normalize_query, split_for, split_key, split_position

__all__ = ["Event", "Limits", "parse_event", "ts_text", "best_rank", "UNKNOWN_ID", "normalize_query", "split_key",
           "split_position", "split_for", "QueryKeys", "PairBatch", "CorpusReport", "text_hash", "load_corpus",
           "upsert_chunks", "known_chunk_ids"]
