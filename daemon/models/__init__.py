"""Models: loading them, encoding with them, the corpus vectors they make, retrieval and fusion, hit@k, and the
registry of versions."""

from daemon.models.encoding import encode_documents, encode_pool, encode_queries
from daemon.models.fusion import WEIGHTS, choose_weight, fused_order, minmax, model_weight
from daemon.models.load import (ModelError, base_embedder_path, load_embedder, load_reranker, packaged_minilm,
                                pick_device)
from daemon.models.metrics import METRICS, Scores, query_metrics, score
from daemon.models.registry import EMBEDDER, RERANKER, Kind
from daemon.models.retention import apply_retention
from daemon.models.retrieval import cross_scores, fuse_rankings, fused_by_weight, rerank, retrieve, retrieve_scored
from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings, load_vectors, prune_vectors, save_vectors

__all__ = ["ModelError", "packaged_minilm", "base_embedder_path", "pick_device", "load_embedder", "load_reranker",
           "encode_queries", "encode_documents", "encode_pool", "WEIGHTS", "minmax", "fused_order", "choose_weight",
           "model_weight", "METRICS", "query_metrics", "Scores", "score", "Corpus", "cache_dir", "load_vectors",
           "save_vectors", "prune_vectors", "corpus_embeddings", "retrieve", "retrieve_scored", "rerank",
           "cross_scores", "fuse_rankings", "fused_by_weight", "EMBEDDER", "RERANKER", "Kind", "apply_retention"]
