"""A local stand-in for the Hugging Face Hub's upload API, enough for `HfApi.create_repo` and
`HfApi.upload_folder` of small files: the official client talks to it when `HF_ENDPOINT` points
here, so `export --push-to-hub` is tested through the real client without the network.

It speaks the hub's wire format as the client expects it (JSON for repo creation and pre-upload,
NDJSON commits with base64 "regular" files) and keeps what was committed in memory. It is as
strict as the hub where the client would notice: an unknown route is a 404, a missing token a 401.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

__all__ = ["HubStub", "run_hub_stub"]


@dataclass
class HubStub:
    url: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> {"private", "files"}
    tokens: list[str] = field(default_factory=list)  # bearer tokens seen (to check where a token went)


def _handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return False
            stub.tokens.append(auth.removeprefix("Bearer "))
            return True

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            body = self._body()
            if not self._authorized():
                return
            if path == "/api/repos/create":
                req = json.loads(body)
                repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                stub.repos.setdefault(repo, {"private": bool(req.get("private")), "files": {}})
                return self._reply(200, {"url": f"{stub.url}/datasets/{repo}", "name": repo})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            parts = path.split("/")
            # /api/datasets/{org}/{name}/(preupload|commit)/{revision}
            if len(parts) >= 7 and parts[1:3] == ["api", "datasets"] and parts[5] in ("preupload", "commit"):
                repo = f"{parts[3]}/{parts[4]}"
                if repo not in stub.repos:
                    return self._reply(404, {"error": f"Repository not found: {repo}"})
                if parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False, "oid": None} for f in files]})
                return self._commit(repo, body)
            self._reply(404, {"error": f"no route {self.path}"})

        def _commit(self, repo: str, body: bytes) -> None:
            files = stub.repos[repo]["files"]
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                op = json.loads(line)
                if op.get("key") == "file":
                    value = op["value"]
                    files[value["path"]] = base64.b64decode(value["content"])
                elif op.get("key") not in ("header",):
                    return self._reply(400, {"error": f"unsupported commit operation {op.get('key')!r}"})
            oid = f"{len(files):040x}"
            self._reply(200, {"commitUrl": f"{stub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid,
                              "success": True})

        def do_GET(self) -> None:  # noqa: N802
            self._reply(404, {"error": f"no route {self.path}"})

    return Handler


@contextlib.contextmanager
def run_hub_stub() -> Iterator[HubStub]:
    """`with run_hub_stub() as hub:` ... set HF_ENDPOINT=hub.url ... `hub.repos[...]["files"]`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    stub = HubStub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(stub)
    thread = threading.Thread(target=server.serve_forever, name="hub-stub", daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
