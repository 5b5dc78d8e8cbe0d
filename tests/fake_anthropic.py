"""A local HTTP server that speaks the Anthropic Messages API, for driving the real SDK in tests.

Each request is answered by ``behave(n, body)`` -> (status, headers, json, delay_s); the default
returns a numbered list of questions. Received requests are kept (headers included) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def ok(text: str, input_tokens: int = 120, output_tokens: int = 40):
    return 200, {}, {"id": "msg_test", "type": "message", "role": "assistant", "model": "claude-test",
                     "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                     "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}, 0.0


def error(status: int, kind: str):
    # retry-after-ms keeps the SDK's backoff short in tests; the SDK honours it.
    return status, {"retry-after-ms": "10"}, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}, 0.0


def questions_for(body: dict) -> str:
    chunk = body["messages"][0]["content"]
    words = chunk.split()[:4]
    return "\n".join(f"{i}. What does the passage about {' '.join(words)} say in point {i}?" for i in range(1, 5))


class FakeAnthropic:
    def __init__(self, behave=None, delay_s: float = 0.0):
        self.behave = behave or (lambda n, body: ok(questions_for(body)))
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake.lock:
                    n = len(fake.requests)
                    fake.requests.append({"path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, headers, payload, delay = fake.behave(n, body)
                time.sleep(delay or fake.delay_s)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
