"""Labels that arrive after the answer: keep recent answers by request id, log each once its label comes.

At retrieval time production rarely knows which chunk answers the question; the label comes later (a click,
a thumbs-down with the document the user finally found, a support agent, a judge). `RecentAnswers` keeps the
last ``remember`` answers in memory; `label` writes the complete v1 event (the query, what was retrieved then,
the label) through a FeedbackLog and forgets the answer, so one answer is logged at most once.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence

from ragloop_client.feedback import FeedbackLog
from ragloop_client.retriever import SearchResult


class RecentAnswers:
    def __init__(self, feedback: FeedbackLog, remember: int = 100_000):
        self.feedback, self.remember = feedback, remember
        self._answers: OrderedDict[str, SearchResult] = OrderedDict()
        self._lock = threading.Lock()
        self.labelled = 0

    def keep(self, result: SearchResult, request_id: str | None = None) -> str:
        """Remember ``result`` under ``request_id`` (a new one when not given); returns the id."""
        rid = request_id or uuid.uuid4().hex
        with self._lock:
            self._answers[rid] = result
            while len(self._answers) > self.remember:
                self._answers.popitem(last=False)
        return rid

    def label(self, request_id: str, expected_ids: Sequence[str]) -> bool:
        """Log the answer ``request_id`` with the chunks that answer it. False: unknown, forgotten or labelled."""
        with self._lock:
            result = self._answers.pop(request_id, None)
        if result is None:
            return False
        self.feedback.log_result(result, expected_ids, request_id=request_id)
        with self._lock:
            self.labelled += 1
        return True

    def __len__(self) -> int:
        return len(self._answers)
