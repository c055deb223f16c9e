"""OpenAI ``POST /v1/embeddings`` as a load: any server that speaks it (colo's agent, infinity-emb, TEI's
OpenAI route), N concurrent clients, texts of about ``tokens`` tokens, ``texts`` texts per request.

The clients are :func:`colo.bench.loads.agents.drive`'s (threads, one pooled connection each, back to back,
503 with ``Retry-After`` counted apart and honoured, every other status an error); only the URL and the body
differ, so the figures are comparable with ``colo bench agents``. A text is ``tokens - 2`` words drawn from
:data:`WORDS` (lower-case, each one WordPiece token in the bench's own vocabulary — see
``scripts/bench_embeddings.sh`` — plus ``[CLS]`` and ``[SEP]``); each request's texts differ, so nothing
can be answered from a cache.

``python -m colo.bench.loads.embeddings --url URL --model ID --clients 1,4,16 --tokens 16,128`` prints one
JSON line per point (url, clients, tokens, texts, req/s, seq/s, p50/p99 ms, errors) and, with ``--table``,
a Markdown table; ``colo bench embeddings`` is the same from colo's CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colo.bench import stats
from colo.bench.loads.agents import AgentLoad, AgentTarget, RequestShape, drive, wait_healthy
from colo.errors import UsageError

# Ordinary English words, each a single token of a WordPiece vocabulary that lists them whole.
WORDS: tuple[str, ...] = (
    "the", "market", "report", "shows", "growth", "in", "energy", "prices", "after", "a", "long", "winter",
    "city", "council", "votes", "on", "new", "budget", "for", "schools", "and", "roads", "team", "wins",
    "final", "match", "late", "goal", "storm", "brings", "heavy", "rain", "to", "coast", "minister", "says",
    "talks", "will", "continue", "next", "week", "scientists", "find", "water", "under", "ice", "of", "moon",
    "bank", "raises", "rates", "again", "as", "inflation", "stays", "high", "film", "festival", "opens",
    "with", "record", "crowd", "train", "strike", "ends", "deal", "reached", "by", "union", "company",
)


def text_of(words: int, seed: int) -> str:
    """``words`` words from :data:`WORDS`, a different sequence for each ``seed``."""
    return " ".join(WORDS[(seed * 17 + i * 3) % len(WORDS)] for i in range(max(1, words)))  # 3 ⊥ 70: no repeats


@dataclass(frozen=True)
class EmbeddingsShape(RequestShape):
    """``rows`` texts of about ``seq_len`` tokens per request, as an OpenAI embeddings body."""

    encoding_format: str = "float"

    def body(self) -> bytes:
        texts = [text_of(self.seq_len - 2, seed=r) for r in range(self.rows)]
        doc = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class EmbeddingsTarget(AgentTarget):
    """A server answering ``POST /v1/embeddings`` at ``url`` (``url`` may already end in ``/v1``)."""

    @property
    def infer_url(self) -> str:
        base = self.url.rstrip("/")
        return base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")


@dataclass(frozen=True)
class EmbeddingsPoint:
    """One measured point: the server, the load, and what it gave."""

    label: str
    clients: int
    tokens: int
    texts: int
    load: AgentLoad

    def to_dict(self) -> dict[str, Any]:
        lat = stats.summarize_latencies(list(self.load.latencies_secs))
        empty = lat.count == 0
        return {
            "server": self.label,
            "url": self.load.url,
            "clients": self.clients,
            "tokens": self.tokens,
            "texts": self.texts,
            "requests": self.load.requests,
            "req_per_sec": round(self.load.requests_per_sec, 1),
            "seq_per_sec": round(self.load.seq_per_sec, 1),
            "p50_ms": None if empty else round(lat.p50_secs * 1000.0, 2),
            "p99_ms": None if empty else round(lat.p99_secs * 1000.0, 2),
            "retry_after": self.load.retry_after,
            "errors": self.load.hard_errors,
            "last_error": self.load.last_error,
        }


def measure(
    label: str,
    url: str,
    model: str,
    *,
    clients: Sequence[int],
    tokens: Sequence[int],
    texts: int = 1,
    window_secs: float = 10.0,
    warmup_secs: float = 2.0,
    encoding_format: str = "float",
    transport: Any = None,
) -> list[EmbeddingsPoint]:
    """Every (tokens, clients) point against one server, one after the other."""
    points: list[EmbeddingsPoint] = []
    for tok in tokens:
        shape = EmbeddingsShape(model=model, rows=texts, seq_len=tok, encoding_format=encoding_format)
        target = EmbeddingsTarget(name=label, url=url, shapes=(shape,))
        for n in clients:
            (load,), _, _ = drive([target], n, window_secs, warmup_secs=warmup_secs, transport=transport)
            points.append(EmbeddingsPoint(label, n, tok, texts, load))
    return points


def table(points: Sequence[EmbeddingsPoint]) -> list[str]:
    """:func:`table_from_dicts` of measured points."""
    return table_from_dicts([p.to_dict() for p in points])


def table_from_dicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table of points (:meth:`EmbeddingsPoint.to_dict`): one row per (tokens, texts, clients), one
    column group per server; errors count every non-200 answer (503 with Retry-After included)."""
    servers = list(dict.fromkeys(str(r["server"]) for r in rows))
    head = "| tokens × texts | clients | " + " | ".join(
        f"{s} req/s | {s} seq/s | {s} p50 ms | {s} p99 ms | {s} errors" for s in servers
    ) + " |"
    lines = [head, "|" + "---|" * (2 + 5 * len(servers))]
    found = {(r["server"], r["tokens"], r["texts"], r["clients"]): r for r in rows}
    for tok, texts, n in dict.fromkeys((r["tokens"], r["texts"], r["clients"]) for r in rows):
        cells = [f"{tok} × {texts}", str(n)]
        for s in servers:
            d = found.get((s, tok, texts, n))
            if d is None:
                cells += ["—"] * 5
                continue
            cells += [
                f"{d['req_per_sec']:,.0f}", f"{d['seq_per_sec']:,.0f}", _ms(d["p50_ms"]), _ms(d["p99_ms"]),
                str(int(d["errors"]) + int(d["retry_after"])),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: give positive integers separated by commas, e.g. 1,4,16")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m colo.bench.loads.embeddings``."""
    p = argparse.ArgumentParser(prog="python -m colo.bench.loads.embeddings", description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", required=True, help="server base URL; repeat for several servers")
    p.add_argument("--label", action="append", default=[], help="a name per --url (default: the URL)")
    p.add_argument("--model", required=True, help="the model id the servers know")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--tokens", default="16,128", help="tokens per text (words + [CLS] + [SEP])")
    p.add_argument("--texts", type=int, default=1, help="texts per request")
    p.add_argument("--window", type=float, default=10.0, help="timed seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds before each point")
    p.add_argument("--encoding-format", choices=["float", "base64"], default="float")
    p.add_argument("--health-timeout", type=float, default=0.0, help="wait for URL/health first (0: don't)")
    p.add_argument("--table", action="store_true", help="print a Markdown table after the JSON lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the points; 0 when every point answered without errors, 1 otherwise, 2 for a bad command line."""
    args = parse_args(argv)
    try:
        clients, tokens = _ints(args.clients, "--clients"), _ints(args.tokens, "--tokens")
        if args.texts < 1 or args.window <= 0 or args.warmup < 0:
            raise UsageError("--texts must be >= 1, --window > 0 and --warmup >= 0")
        if args.label and len(args.label) != len(args.url):
            raise UsageError(f"{len(args.label)} --label for {len(args.url)} --url: give one per URL or none")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    labels = args.label or args.url
    if args.health_timeout > 0:
        targets = [EmbeddingsTarget(name=lb, url=u, shapes=()) for lb, u in zip(labels, args.url, strict=True)]
        missing = wait_healthy(targets, args.health_timeout)
        if missing:
            print(f"error: no 200 from /health of {', '.join(missing)}", file=sys.stderr)
            return 1
    points: list[EmbeddingsPoint] = []
    for label, url in zip(labels, args.url, strict=True):
        got = measure(
            label, url, args.model, clients=clients, tokens=tokens, texts=args.texts,
            window_secs=args.window, warmup_secs=args.warmup, encoding_format=args.encoding_format,
        )
        for p in got:
            print(json.dumps(p.to_dict()), flush=True)
        points += got
    if args.table:
        print("\n".join(table(points)))
    return 0 if all(p.load.hard_errors == 0 and p.load.requests > 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
