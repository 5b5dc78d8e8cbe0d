"""Serve: the Qdrant index behind the alias (blue/green), the serving manifest, promotion and rollback."""

from daemon.serve.index import (IndexBuildError, IndexReport, build_index, refresh_serving_index, reindex_estimate_s,
                                rollback_index, search, serving_collection, serving_index_stale,
                                sync_corpus_from_qdrant)
from daemon.serve.manifest import build_manifest, publish, republish_if_stale, run_hook
from daemon.serve.promotion import force_promote, promote, rollback
from daemon.serve.vectorstore import QdrantStore, export_collection, open_vectors, point_id, prune_exports

__all__ = ["QdrantStore", "open_vectors", "point_id", "export_collection", "prune_exports", "IndexBuildError", "IndexReport", "build_index",
           "rollback_index", "refresh_serving_index", "serving_index_stale", "serving_collection", "search", "sync_corpus_from_qdrant", "reindex_estimate_s",
           "build_manifest", "publish", "republish_if_stale", "run_hook", "promote", "force_promote", "rollback"]
