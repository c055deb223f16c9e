"""A stand-in for colo's built-in agent (``modelserver/app.py``) for CPU tests: ``GET /health`` answers 200
``{"status": "ready"}``; ``POST /infer`` with ``input_ids`` answers 200 with one output per row, 422 for a body
without them, and — every ``--shed-every``-th request — 503 ``queue full`` with ``Retry-After: 0``.

``python fake_agent.py PORT [--shed-every K] [--delay-ms MS]``; stdlib only, HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(port: int, *, shed_every: int = 0, delay_ms: float = 0.0) -> ThreadingHTTPServer:
    counter = itertools.count(1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, doc: object, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ready", "models": {}})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/infer":
                self._send(404, {"error": "not found"})
                return
            with lock:
                n = next(counter)
            if shed_every and n % shed_every == 0:
                self._send(503, {"error": "queue full", "detail": "64 waiting"}, {"Retry-After": "0"})
                return
            try:
                rows = json.loads(raw)["input_ids"]
            except (ValueError, KeyError, TypeError):
                self._send(422, {"error": "bad request"})
                return
            if delay_ms:
                time.sleep(delay_ms / 1000)
            self._send(200, {"outputs": [[0.0] for _ in rows], "timings": {}})

    ThreadingHTTPServer.request_queue_size = 256  # many clients connect at once (the default backlog is 5)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--shed-every", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    serve(args.port, shed_every=args.shed_every, delay_ms=args.delay_ms).serve_forever()
