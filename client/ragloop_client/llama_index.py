"""LlamaIndex: a `BaseRetriever` over ragloop_client's Retriever (``pip install 'ragloop-client[llamaindex]'``).

    retriever = RagloopRetriever(Retriever("serving.json"), k=5, feedback=FeedbackLog("feedback.jsonl"))
    nodes = retriever.retrieve("how do I rotate logs?")   # NodeWithScore; node.metadata: chunk_id, request_id, ...
    retriever.feedback.label(nodes[0].node.metadata["request_id"], ["faq-42"])   # later, when the label arrives
"""

from __future__ import annotations

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ragloop_client.feedback import FeedbackLog
from ragloop_client.retriever import Retriever


class RagloopRetriever(BaseRetriever):
    """What ragloop serves, as LlamaIndex nodes (node id = chunk id, also in metadata)."""

    def __init__(self, client: Retriever, k: int = 10, feedback: FeedbackLog | None = None, **kwargs):
        """``feedback``: each retrieval is logged there (unlabeled, with its request id) for its later label."""
        super().__init__(**kwargs)
        self.client, self.k, self.feedback = client, k, feedback

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.client.search(query_bundle.query_str, self.k)
        rid = self.feedback.log_result(result)["request_id"] if self.feedback is not None else None
        return [NodeWithScore(node=TextNode(id_=h.chunk_id, text=h.text,
                                            metadata={"chunk_id": h.chunk_id, "rank": i + 1, "similarity": h.similarity,
                                                      "ragloop_version": result.version, "request_id": rid}),
                              score=h.score)
                for i, h in enumerate(result.hits)]


__all__ = ["RagloopRetriever", "Retriever", "FeedbackLog"]
