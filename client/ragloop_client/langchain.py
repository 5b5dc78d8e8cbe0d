"""LangChain: a `BaseRetriever` over ragloop_client's Retriever (``pip install 'ragloop-client[langchain]'``).

    retriever = RagloopRetriever(client=Retriever("serving.json"), k=5, feedback=FeedbackLog("feedback.jsonl"))
    docs = retriever.invoke("how do I rotate logs?")      # Documents; metadata: chunk_id, score, request_id, ...
    retriever.feedback.label(docs[0].metadata["request_id"], ["faq-42"])   # later, when the label arrives
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ragloop_client.feedback import FeedbackLog
from ragloop_client.retriever import Retriever


class RagloopRetriever(BaseRetriever):
    """What ragloop serves, as LangChain Documents (the chunk id in metadata)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    client: Any  # ragloop_client.Retriever (Any: pydantic need not know the type)
    k: int = 10
    feedback: Any = None  # ragloop_client.FeedbackLog: each retrieval logged, for its later label

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        result = self.client.search(query, self.k)
        rid = self.feedback.log_result(result)["request_id"] if self.feedback is not None else None
        return [Document(page_content=h.text, id=h.chunk_id,
                         metadata={"chunk_id": h.chunk_id, "score": h.score, "similarity": h.similarity, "rank": i + 1,
                                   "ragloop_version": result.version, "request_id": rid})
                for i, h in enumerate(result.hits)]


__all__ = ["RagloopRetriever", "Retriever", "FeedbackLog"]
