"""A real HTTP teacher for tests and benchmarks: OpenAI chat completions and Anthropic messages,
both batch APIs, rate limits with each provider's headers.

The engine's hardest promises (an exact budget, no lost or duplicated queries, graceful handling
of every way a provider fails) can only be tested against something that fails the way providers
do: over HTTP, with 429s and retry headers, 5xx bursts, dropped connections, broken 200 bodies and
hangs. This server does all of that on 127.0.0.1, deterministically from a seed, and counts what it
saw so a test can compare the engine's ledger with what the "provider" actually served.

    python -m synthledger.testing.server --port 0 --rpm 6000 --window-s 1 --stats-file s.json

By default it is as unkind as OpenAI: a 429 says only `retry-after: 1` (whole seconds) and the
`x-ratelimit-*` headers give per-minute limits and Go-duration resets; `--rate-headers kind` adds
the exact `retry-after-ms`. The parts live in `app.py` (the server), `serverconfig.py`,
`ratelimit.py`, `payloads.py` and `batches.py`; this module is the entry point and re-exports them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from .app import TeacherServer
from .payloads import ANTHROPIC, OPENAI
from .ratelimit import HEADER_STYLES, SlidingWindow, go_duration, retry_after_headers
from .serverconfig import CONTROLLABLE, ServerConfig, Stats

__all__ = ["ANTHROPIC", "CONTROLLABLE", "OPENAI", "ServerConfig", "ServerHandle", "SlidingWindow", "Stats",
           "TeacherServer", "go_duration", "main", "retry_after_headers", "run_in_thread"]


# ---- running in a background thread, for synchronous tests ---------------------------------------


class ServerHandle:
    """A server running on its own event loop in a daemon thread; methods are thread-safe."""

    def __init__(self, server: TeacherServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._loop = loop

    @property
    def url(self) -> str:
        return self.server.url

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self, log: bool = False) -> dict[str, Any]:
        return self._call(self.server.stats, log)

    def control(self, **changes: Any) -> dict[str, Any]:
        return self._call(self.server.control, **changes)

    def reset(self) -> None:
        self._call(self.server.reset)


@contextlib.contextmanager
def run_in_thread(config: ServerConfig | None = None, **overrides: Any) -> Iterator[ServerHandle]:
    """`with run_in_thread(ServerConfig(rpm=60)) as srv: ... srv.url ... srv.stats()`."""
    config = replace(config or ServerConfig(), **overrides)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="teacher-server", daemon=True)
    thread.start()
    server = TeacherServer(config)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield ServerHandle(server, loop)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ---- command line --------------------------------------------------------------------------------


def load_answers(path: str) -> dict[str, str]:
    """A JSON object {question: answer}, or JSONL lines with `question` and `answer` keys."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{") and not path.endswith(".jsonl"):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of question -> answer")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row["question"])] = str(row["answer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: expected an object with 'question' and 'answer' ({exc})") from None
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m synthledger.testing.server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (the printed URL has it)")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--rpm", type=float)
    ap.add_argument("--tpm", type=float)
    ap.add_argument("--itpm", type=float, help="Anthropic's input tokens per minute (prompt, cache reads excluded)")
    ap.add_argument("--otpm", type=float, help="Anthropic's output tokens per minute (max_tokens, then what was written)")
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--rate-headers", choices=HEADER_STYLES, default="openai",
                    help="openai: whole-second retry-after only (as OpenAI); kind: also retry-after-ms; "
                         "window: per-window counts and retry-after-ms; groq: as openai, the requests "
                         "limit counted per day")
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--error-codes", default="500,503", help="comma-separated HTTP statuses")
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--malformed-rate", type=float, default=0.0)
    ap.add_argument("--slow-rate", type=float, default=0.0)
    ap.add_argument("--slow-s", type=float, default=5.0)
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("--require-api-key")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--answers", help="JSON {question: answer} or JSONL with question/answer")
    ap.add_argument("--wrong-rate", type=float, default=0.0)
    ap.add_argument("--max-requests", type=int)
    ap.add_argument("--exhausted-status", type=int, default=429)
    ap.add_argument("--log-size", type=int, default=10_000)
    ap.add_argument("--prompt-cache", action="store_true", help="report repeated prompts as cached")
    ap.add_argument("--ignore-n", action="store_true", help="answer one choice whatever n asks")
    ap.add_argument("--greedy", action="store_true",
                    help="ignore temperature: the same prompt always gets the same reply")
    ap.add_argument("--models", default="test-teacher", help="comma-separated model names the server serves")
    ap.add_argument("--strict-models", action="store_true",
                    help="answer a model not in --models with 404 model_not_found")
    ap.add_argument("--max-output-tokens", type=int, default=16_384,
                    help="a larger max_tokens is refused with a 400, as the real providers do")
    ap.add_argument("--batch-validating-s", type=float, default=0.05)
    ap.add_argument("--batch-request-s", type=float, default=0.0005, help="processing time per batch request")
    ap.add_argument("--batch-finalizing-s", type=float, default=0.05)
    ap.add_argument("--batch-expire-s", type=float, help="a batch still running after this long expires")
    ap.add_argument("--batch-fail", action="store_true", help="refuse every batch at validation")
    ap.add_argument("--batch-error-rate", type=float, default=0.0)
    ap.add_argument("--batch-enqueued-tokens", type=int,
                    help="OpenAI's enqueued token limit: a batch that would go over fails with token_limit_exceeded")
    ap.add_argument("--refusal-rate", type=float, default=0.0,
                    help="share of answers stopped part way (OpenAI content_filter, Anthropic refusal)")
    ap.add_argument("--batch-cut-lines", type=int, default=0, metavar="N",
                    help="the last N lines of an OpenAI batch's output file are cut off mid-way")
    ap.add_argument("--batch-create-hang", type=int, default=0, metavar="N",
                    help="the Nth batch is created and its reply never comes (the connection hangs)")
    ap.add_argument("--batch-max-bytes", type=int,
                    help="a larger batch upload is refused, as OpenAI (200 MB) and Anthropic (256 MB) refuse theirs")
    ap.add_argument("--usage-factor", type=float, default=1.0, help="report usage x this (an overbilling provider)")
    ap.add_argument("--no-usage-rate", type=float, default=0.0, help="share of 200s sent without `usage`")
    ap.add_argument("--echo-key", action="store_true", help="401 bodies repeat the key they were sent")
    ap.add_argument("--garbled-headers", action="store_true", help="rate-limit headers that are not numbers")
    ap.add_argument("--stats-file", help="stats JSON, rewritten every 0.5 s and on shutdown")
    return ap


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
        rpm=args.rpm, tpm=args.tpm, itpm=args.itpm, otpm=args.otpm, window_s=args.window_s, rate_headers=args.rate_headers,
        error_rate=args.error_rate,
        error_codes=tuple(int(c) for c in args.error_codes.split(",") if c.strip()),
        drop_rate=args.drop_rate, malformed_rate=args.malformed_rate, slow_rate=args.slow_rate,
        slow_s=args.slow_s, hang=args.hang, require_api_key=args.require_api_key, seed=args.seed,
        answers=load_answers(args.answers) if args.answers else None, wrong_rate=args.wrong_rate,
        max_requests=args.max_requests, exhausted_status=args.exhausted_status, log_size=args.log_size,
        prompt_cache=args.prompt_cache, ignore_n=args.ignore_n, greedy=args.greedy,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()), strict_models=args.strict_models,
        max_output_tokens=args.max_output_tokens,
        batch_validating_s=args.batch_validating_s,
        batch_request_s=args.batch_request_s, batch_finalizing_s=args.batch_finalizing_s,
        batch_expire_s=args.batch_expire_s, batch_fail=args.batch_fail, batch_error_rate=args.batch_error_rate,
        batch_enqueued_tokens=args.batch_enqueued_tokens, batch_max_bytes=args.batch_max_bytes,
        batch_create_hang=args.batch_create_hang, batch_cut_lines=args.batch_cut_lines,
        refusal_rate=args.refusal_rate,
        usage_factor=args.usage_factor, no_usage_rate=args.no_usage_rate, echo_key=args.echo_key,
        garbled_headers=args.garbled_headers,
    )


async def _serve_forever(server: TeacherServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    print(f"listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_forever(TeacherServer(config, stats_file=args.stats_file)))
    except OSError as exc:  # the port is taken, or the address is not ours to bind
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
