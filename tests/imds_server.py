"""A minimal EC2 instance metadata service, IMDSv2 only, for running the AWS pool's boot script off EC2.

Like the real service it hands out session tokens on ``PUT /latest/api/token`` (the TTL header is required,
1-21600 s) and answers ``GET /latest/meta-data/...`` only with a valid, unexpired token in
``X-aws-ec2-metadata-token``: without one, 401. It answers per client address, as each instance sees its own
metadata: ``instances`` maps the address a test host connects from to that instance's metadata paths; a token
is valid only for the address it was issued to. Every request is recorded (``requests``) so a test can check
the order (a PUT before the GETs).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
META_PREFIX = "/latest/meta-data/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21600


@dataclass(frozen=True)
class ImdsRequest:
    client: str
    method: str
    path: str
    status: int


class FakeImds:
    """IMDSv2 on ``address`` (an ephemeral port). ``instances``: client address → {metadata path: value}, e.g.
    ``{"10.213.7.2": {"instance-id": "i-…", "placement/region": "us-east-1"}}``. Use as a context manager (the
    server is stopped and its socket closed on exit)."""

    def __init__(self, address: str, instances: Mapping[str, Mapping[str, str]]) -> None:
        self.instances = {client: dict(paths) for client, paths in instances.items()}
        self.requests: list[ImdsRequest] = []
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client address, monotonic expiry)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((address, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-imds", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeImds:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def _record(self, client: str, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append(ImdsRequest(client, method, path, status))

    def _issue(self, client: str, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (client, time.monotonic() + ttl)
        return token

    def _valid(self, client: str, token: str | None) -> bool:
        with self._lock:
            issued = self._tokens.get(token or "")
        return issued is not None and issued[0] == client and time.monotonic() < issued[1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads `requests`
                pass

            def _answer(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                imds._record(self.client_address[0], self.command, self.path, status)

            def do_PUT(self) -> None:
                if self.path != TOKEN_PATH:
                    return self._answer(404)
                ttl = self.headers.get(TTL_HEADER, "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL_S:
                    return self._answer(400)  # the real service: a missing or bad TTL is a 400
                return self._answer(200, imds._issue(self.client_address[0], int(ttl)))

            def do_GET(self) -> None:
                client = self.client_address[0]
                if not imds._valid(client, self.headers.get(TOKEN_HEADER)):
                    return self._answer(401)  # IMDSv2 only: no token, a wrong or expired one
                paths = imds.instances.get(client)
                if paths is None or not self.path.startswith(META_PREFIX):
                    return self._answer(404)
                value = paths.get(self.path[len(META_PREFIX) :])
                return self._answer(404) if value is None else self._answer(200, value)

        return Handler
