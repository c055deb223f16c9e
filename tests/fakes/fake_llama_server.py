"""A stand-in for llama.cpp's ``llama-server`` on CPU: same command line, same OpenAI-API answers.

    python tests/fakes/fake_llama_server.py -m MODEL.gguf --port 9301 -np 1 -c 4096 -ngl 99 [...]

``GET /health`` answers 503 ``{"error": ...}`` while "loading" (``--load-secs``, default 0.3), then 200
``{"status": "ok"}``. ``POST /v1/chat/completions`` answers as llama-server does (``usage`` and its own
``timings``), taking ``--secs-per-token`` per generated token (``max_tokens``; with ``ignore_eos`` exactly that
many), at most ``-np`` requests at a time. Unknown options are accepted and ignored, as a dry run needs.
The response bodies follow ones recorded from llama-server (b6xxx): field names and nesting are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON; test servers import it as ``fakes.fake_llama_server.JsonHandler``."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--model", default="model.gguf")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("--load-secs", type=float, default=0.3)
    p.add_argument("--secs-per-token", type=float, default=0.001)
    p.add_argument("--version", action="store_true")
    args, _unknown = p.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.version:
        print("version: 0 (fake llama-server)\nbuilt with python for tests")
        return
    ready_at = time.monotonic() + args.load_secs
    slots = threading.Semaphore(max(args.parallel, 1))

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                if time.monotonic() < ready_at:
                    self._reply(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
                else:
                    self._reply(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._reply(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            else:
                self._reply(404, {"error": {"code": 404, "message": "File Not Found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/chat/completions":
                self._reply(404, {"error": {"code": 404, "message": "File Not Found"}})
                return
            if time.monotonic() < ready_at:
                self._reply(503, {"error": {"code": 503, "message": "Loading model"}})
                return
            n = int(body.get("max_tokens") or body.get("n_predict") or 16)
            with slots:
                t0 = time.monotonic()
                time.sleep(n * args.secs_per_token)
                ms = 1000 * (time.monotonic() - t0)
            self._reply(
                200,
                {
                    "choices": [
                        {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "tok " * n}}
                    ],
                    "created": int(time.time()),
                    "model": body.get("model", "gpt-3.5-turbo"),
                    "system_fingerprint": "b0000-fake",
                    "object": "chat.completion",
                    "usage": {"completion_tokens": n, "prompt_tokens": 17, "total_tokens": n + 17},
                    "id": "chatcmpl-fake",
                    "timings": {
                        "prompt_n": 17,
                        "prompt_ms": 1.5,
                        "prompt_per_token_ms": 0.09,
                        "prompt_per_second": 11333.3,
                        "predicted_n": n,
                        "predicted_ms": ms,
                        "predicted_per_token_ms": ms / n,
                        "predicted_per_second": 1000 * n / ms if ms else 0.0,
                    },
                },
            )

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
