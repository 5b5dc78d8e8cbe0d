"""A reference RAG retrieval service on ragloop_client: the template to copy into your own service.

    python examples/rag_service.py --manifest state/serving.json --log logs/feedback.jsonl --port 8080

    GET  /search?q=how+do+I+rotate+logs&k=10   -> {"request_id", "version", "hits": [{"chunk_id", "score", "text"}]}
    POST /feedback {"request_id": "...", "expected_ids": ["chunk-42"]}   -> 204; the label is logged for ragloop
    POST /reload                                                         -> {"version"} (the manifest is also polled)
    GET  /healthz                                                        -> {"version", "requests", "labels"}

Every search is logged as it is served (query, what was retrieved, the version, a request_id) without a label:
the label usually arrives later (a click, a thumbs-down with the document the user finally found, an agent,
a judge), and /feedback logs it as a label line with the same request_id. ragloop joins the two, whichever
it reads first and whichever worker process or log file wrote them; a label whose search it never reads is
quarantined after ingest.label_wait_s, with the reason.
Only the standard library and ragloop_client: a thread per request (ThreadingHTTPServer), one Retriever.
"""

from __future__ import annotations

import argparse
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from ragloop_client import FeedbackLog, Retriever


class Service:
    def __init__(self, retriever: Retriever, feedback: FeedbackLog):
        self.retriever, self.feedback = retriever, feedback
        self.requests = self.labels = 0

    def search(self, query: str, k: int) -> dict:
        result = self.retriever.search(query, k)
        rid = self.feedback.log_result(result)["request_id"]  # unlabeled: /feedback brings the label
        self.requests += 1
        return {"request_id": rid, "version": result.version,
                "hits": [{"chunk_id": h.chunk_id, "score": round(h.score, 4), "text": h.text} for h in result.hits]}

    def label(self, request_id: str, expected_ids: list[str]) -> None:
        self.feedback.label(request_id, expected_ids)
        self.labels += 1


def handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/healthz":
                return self._json(HTTPStatus.OK, {"version": service.retriever.version, "requests": service.requests,
                                                  "labels": service.labels})
            if url.path != "/search":
                return self._json(HTTPStatus.NOT_FOUND, {"error": "GET /search?q=...&k=10 or /healthz"})
            qs = parse_qs(url.query)
            try:
                query, k = qs["q"][0], int(qs.get("k", ["10"])[0])
                return self._json(HTTPStatus.OK, service.search(query, k))
            except (KeyError, ValueError) as exc:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"q (a non-empty query) and k (an integer) "
                                                                    f"are needed: {exc}"})

        def do_POST(self) -> None:
            if self.path == "/reload":
                service.retriever.reload()
                return self._json(HTTPStatus.OK, {"version": service.retriever.version})
            if self.path != "/feedback":
                return self._json(HTTPStatus.NOT_FOUND, {"error": "POST /feedback or /reload"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                service.label(str(body["request_id"]), list(body["expected_ids"]))
            except (KeyError, TypeError, ValueError) as exc:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f'send {{"request_id", "expected_ids"}}: {exc}'})
            self.send_response(HTTPStatus.NO_CONTENT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:  # one line per request at debug, not stderr noise
            logging.getLogger("rag_service").debug(fmt, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True, help="ragloop's serving.json")
    ap.add_argument("--log", required=True, help="the feedback log ragloop ingests (one of its ingest.paths)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--device", default=None, help="torch device (default: a GPU when there is one)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with Retriever(args.manifest, device=args.device) as retriever, FeedbackLog(args.log, source="rag_service") as fb:
        server = ThreadingHTTPServer((args.host, args.port), handler(Service(retriever, fb)))
        logging.getLogger("rag_service").info("serving %s on http://%s:%d", retriever.version, args.host,
                                              server.server_address[1])
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
