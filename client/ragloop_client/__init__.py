"""ragloop's production client: serve exactly what ragloop's gate approved, and log what production saw.

    from ragloop_client import FeedbackLog, Retriever

    retriever = Retriever("/var/lib/ragloop/serving.json")   # follows every promotion and rollback
    result = retriever.search("how do I rotate logs?", k=10)   # result.hits, result.ids, result.version
    feedback = FeedbackLog("/var/log/rag/feedback.jsonl")
    rid = feedback.log_result(result)["request_id"]              # the retrieval, as production served it
    feedback.label(rid, ["chunk-42"])                            # later, from any process: what answers it
"""

from ragloop_client.feedback import FeedbackLog
from ragloop_client.fusion import fused_order, minmax, pipeline_order
from ragloop_client.manifest import FORMAT, EmbedderRef, Manifest, ManifestError, RerankerRef, read_manifest
from ragloop_client.retriever import Hit, Pipeline, Retriever, SearchResult

__version__ = "0.1.0"
__all__ = ["Retriever", "SearchResult", "Hit", "Pipeline", "FeedbackLog", "Manifest", "ManifestError",
           "EmbedderRef", "RerankerRef", "read_manifest", "FORMAT", "minmax", "fused_order", "pipeline_order",
           "__version__"]
