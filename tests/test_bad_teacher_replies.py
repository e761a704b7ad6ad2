"""A teacher that answers, but never usefully: every 200 is not a chat completion, every request is
refused as a bad request, every error is a gateway's HTML page.

Each runs the real CLI against a real HTTP server on 127.0.0.1: a few lines of the standard
library's `http.server`, because these are faults of a whole endpoint (a web page where the API
should be, a proxy that rewrites every request) that the project's test server does not play.
The run must stop as `failed` within a few requests, say why in one line, and keep the budget
exact: a malformed 200 may have been billed, so it stays spent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from synthledger.plugins.teachers.errors import malformed, status_error
from synthledger.testing.projects import write_project

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")
SECRET = "sk-proj-h11secretkey0123456789abcdef"

# What a request gets: (status, content type, body); `auth` is the Authorization header it came with.
Reply = Callable[[int, str], "tuple[int, str, bytes]"]


class Endpoint:
    """A tiny HTTP server whose every POST is answered by `reply(n, auth)` (n counts from 0)."""

    def __init__(self, reply: Reply) -> None:
        self.requests = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    n = outer.requests
                    outer.requests += 1
                status, ctype, body = reply(n, self.headers.get("Authorization", ""))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the run stopped with this request in flight and hung up

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made: list[Endpoint] = []

    def start(reply: Reply) -> Endpoint:
        made.append(Endpoint(reply))
        return made[-1]

    yield start
    for e in made:
        e.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", H11_TEACHER_KEY=SECRET)
    env.pop("SYNTHLEDGER_STORE", None)
    return env


def _generate(tmp_path: Path, url: str, limits: str = "", queries: int = 40,
              timeout: float = 90) -> tuple[subprocess.CompletedProcess, float, str]:
    config = write_project(tmp_path, url, seeds=6, queries=queries,
                           extra="\n[limits]\n" + limits if limits else "")
    config.write_text(config.read_text().replace('max_tokens = 64', 'max_tokens = 64\napi_key_env = "H11_TEACHER_KEY"'))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, CLI, "generate", "--config", str(config), "--no-progress", "--store", store],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout)
    return res, time.monotonic() - t0, store


def _audit(tmp_path: Path, store: str, run_id: str) -> dict:
    res = subprocess.run([sys.executable, CLI, "audit", run_id, "--json", "--store", store], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=60)
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"], (report.get("violations"), res.stderr)
    return report


def _last(res: subprocess.CompletedProcess) -> list[str]:
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, res.stderr
    return lines[-1].split()


def _reason_line(res: subprocess.CompletedProcess, words: str) -> str:
    """The one stderr line that says why the run stopped; the text around it is the run's own
    notes (store, summary), so a reason that spilled onto a second line shows up as a stray line."""
    hits = [ln for ln in res.stderr.splitlines() if words in ln]
    assert len(hits) == 1, res.stderr
    line = hits[0]
    assert line.rstrip().endswith("stopping"), f"the reason does not end on its own line:\n{res.stderr}"
    assert "Traceback" not in res.stderr and SECRET not in res.stderr + res.stdout, res.stderr
    return line


# ---- a teacher whose every 200 is not a chat completion ----------------------------------------------------

_USAGE = '"usage": {"prompt_tokens": %s, "completion_tokens": 5, "total_tokens": 12}'
_CHOICE = '{"index": 0, "message": {"role": "assistant", "content": "#### 4"}, "finish_reason": "stop"}'
BROKEN_200S = [
    b"<!DOCTYPE html>\n<html>\n<head><title>Welcome</title></head>\n<body>\n<h1>It works!</h1>\n"
    b"<p>Your key: %s</p>\n</body>\n</html>\n",  # a web server where the API should be (echoing the key)
    ('{"id": "c1", "object": "chat.completion", "choices": [], ' + _USAGE % 7 + "}").encode(),
    b'{"id": "c2", "object": "chat.completion", "choices": [{"index": 0, "mess',
    b'[{"id": "c3"}]',
    ('{"id": "c4", "object": "chat.completion", "choices": [' + _CHOICE + "], " + _USAGE % -3 + "}").encode(),
    ('{"id": "c5", "object": "chat.completion", "choices": [' + _CHOICE + "], " + _USAGE % '"7"' + "}").encode(),
    ('{"id": "c6", "object": "chat.completion", "choices": [' + _CHOICE + "], " + _USAGE % "NaN" + "}").encode(),
]


def _broken(n: int, auth: str) -> tuple[int, str, bytes]:
    body = BROKEN_200S[n % len(BROKEN_200S)]
    if b"%s" in body:
        body = body.replace(b"%s", auth.encode())
    return 200, "text/html" if body.startswith(b"<") else "application/json", body


def test_a_teacher_whose_every_reply_is_malformed_stops_the_run_as_failed(tmp_path, endpoint):
    ep = endpoint(_broken)
    res, _, store = _generate(tmp_path, ep.url, "max_concurrency = 2\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\n")
    assert res.returncode == 1, (res.stdout, res.stderr)
    run_id, status = _last(res)[1:3]
    assert status == "failed", res.stdout
    line = _reason_line(res, "not valid chat completions")
    assert "malformed" in line and len(line) < 600, line
    sent = ep.requests
    assert sent <= 10, f"{sent} malformed replies before the run stopped"
    report = _audit(tmp_path, store, run_id)
    # Each broken 200 may have been billed: every one is spent and none settled (the stop also
    # charges what was still in flight, at most max_concurrency requests the server may not have seen).
    lost = report["counts"]["lost"]
    assert report["counts"]["settled"] == 0 and lost == report["spent"]["queries"] and sent <= lost <= sent + 2


# ---- a teacher that refuses every request as a bad request -------------------------------------------------

PROVIDER_400 = "Invalid value for 'messages[0].role': 'sytem' is not one of ['system', 'user', 'assistant']."


def _bad_request(n: int, auth: str) -> tuple[int, str, bytes]:
    return 400, "application/json", json.dumps({"error": {
        "message": PROVIDER_400, "type": "invalid_request_error", "param": "messages[0].role", "code": None}}).encode()


@pytest.mark.parametrize("limits", ["", "max_concurrency = 1\nbreaker_threshold = 2\n"],
                         ids=["default-limits", "one-at-a-time-quick-breaker"])
def test_a_teacher_that_answers_every_request_400_stops_the_run_promptly(tmp_path, endpoint, limits):
    # The breaker pauses for a provider that is down; one that answers "bad request" is up, and no
    # pause mends the request, so even a breaker set to open after two failures must not hold it.
    ep = endpoint(_bad_request)
    res, took, store = _generate(tmp_path, ep.url, limits)
    assert res.returncode == 1, (res.stdout, res.stderr)
    run_id, status = _last(res)[1:3]
    assert status == "failed", res.stdout
    line = _reason_line(res, PROVIDER_400)
    assert "HTTP 400" in line, line
    assert took < 30, f"took {took:.0f}s to stop"
    assert ep.requests <= 20, ep.requests  # the first wave of max_concurrency requests, no more
    report = _audit(tmp_path, store, run_id)
    refused = [p for _, p in _events(tmp_path / "store.db", "attempt_failed") if p["kind"] == "bad_request"]
    assert len(refused) >= 5 and not [p for p in refused if p["maybe_billed"]]  # a 400 is never billed
    # Only what was still in flight when the run stopped is charged (it may have been served).
    assert report["counts"]["settled"] == 0 and report["spent"]["queries"] == report["counts"]["lost"] <= 16


# ---- an error body that is a gateway's HTML page ----------------------------------------------------------

NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def test_an_html_error_page_is_one_line_in_the_runs_message(tmp_path, endpoint):
    ep = endpoint(lambda n, auth: (502, "text/html", NGINX_502))
    res, _, store = _generate(tmp_path, ep.url, "max_concurrency = 2\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\n"
                                                "breaker_threshold = 2\nbreaker_cooldown_s = 0.01\n")
    assert res.returncode == 1, (res.stdout, res.stderr)
    run_id, status = _last(res)[1:3]
    assert status == "failed"
    line = _reason_line(res, "502 Bad Gateway")
    assert "<" not in line and "nginx" in line, line
    for _, payload in _events(tmp_path / "store.db", "attempt_failed"):
        assert "\n" not in payload["message"] and "<" not in payload["message"], payload["message"]
    _audit(tmp_path, store, run_id)


def _events(db: Path, type_: str) -> list[tuple[str, dict]]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(t, json.loads(p)) for t, p in con.execute("SELECT type, payload FROM events WHERE type = ?", (type_,))]
    finally:
        con.close()


def test_provider_bodies_in_error_messages_are_one_short_line():
    err = status_error(502, NGINX_502.decode(), {}, NGINX_502.decode())
    assert err.message == "HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx", err.message
    assert err.body_excerpt.startswith("<html>")  # the stored excerpt stays what came back
    long = status_error(400, "bad\n\n" + "x " * 500, {}, None).message
    assert "\n" not in long and len(long) <= 220, long
    bad = malformed("JSONDecodeError: unexpected\ncharacter", 200, b"<html>\n<body>oops</body></html>")
    assert bad.message == "malformed response: JSONDecodeError: unexpected character", bad.message
