"""A real OpenAI-compatible HTTP stub on 127.0.0.1 for the judge tests (test_judge_actor, test_reward_worker)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

GOOD = json.dumps({"terminology": 4, "instrument_anatomy": 5, "specificity": 3, "procedure_context": 4,
                   "action_state": 2, "rationale": "close"})  # mean 3.6, reward 0.65
KEY_ENV = "MEDGRPO_TEST_JUDGE_KEY"
SECRET = "sk-test-0123456789abcdef-SECRET"


def completion(content: Optional[str]) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


class JudgeServer:
    """A real HTTP server on 127.0.0.1 speaking POST /v1/chat/completions; ``behavior(n, body)`` returns
    (status, payload, delay_s) for the n-th request (0-based).

    ``backlog``: the listen queue (socketserver's default is 5: a burst of more simultaneous connections, e.g. a
    judge with ``max_concurrency`` 64, can be reset before the server accepts them). ``delay_s``: the delay of the
    default behavior (every request answered with ``GOOD``)."""

    def __init__(self, backlog: Optional[int] = None, delay_s: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.behavior: Callable[[int, dict], tuple[int, Any, float]] = lambda n, body: (200, completion(GOOD),
                                                                                        delay_s)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    n = len(server.requests)
                    server.requests.append((dict(self.headers), body))
                if self.path != "/v1/chat/completions":
                    status, payload, delay = 404, {"error": "not found"}, 0.0
                else:
                    status, payload, delay = server.behavior(n, body)
                time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        if backlog is not None:
            self.httpd.request_queue_size = backlog
        try:
            self.httpd.server_bind()
            self.httpd.server_activate()
        except OSError:
            self.httpd.server_close()
            raise
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
