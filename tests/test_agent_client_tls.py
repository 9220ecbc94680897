"""AgentClient exposure (issue 11, item 10): https agents are pinned by certificate fingerprint, plain HTTP is for
loopback only, and a wrong certificate is refused before the token leaves this machine.

The servers are real TLS servers on 127.0.0.1 with certificates the agent's own code makes
(``gpustack_runtime.tls``); one counts every request it receives, so a refused handshake is shown to have sent
nothing.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gpustack_runtime.tls import TlsFiles, ensure_tls_dir

from gpustack_pulumi.providers.agent_client import (
    AgentCertificateError,
    AgentCertificateMismatch,
    AgentClient,
    AgentInsecureEndpoint,
    AgentUnreachable,
    is_loopback_host,
)

TOKEN = "tls-test-token-5be1"


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def tls_server(files: TlsFiles) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def agent_tls(tmp_path: Path) -> TlsFiles:
    return ensure_tls_dir(tmp_path / "agent-tls", ["127.0.0.1"])


def test_the_pinned_certificate_is_accepted(agent_tls: TlsFiles) -> None:
    with tls_server(agent_tls) as (url, seen), AgentClient(url, TOKEN, agent_tls.fingerprint) as client:
        assert client.healthy()
        assert client._request("GET", "/v1/capacity", "reading capacity").json() == {"status": "ok"}
    assert seen == [("/healthz", f"Bearer {TOKEN}"), ("/v1/capacity", f"Bearer {TOKEN}")]


def test_the_pin_may_be_written_with_colons_and_upper_case(agent_tls: TlsFiles) -> None:
    digest = agent_tls.fingerprint.removeprefix("sha256:")
    spelled = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    with tls_server(agent_tls) as (url, _), AgentClient(url, TOKEN, fingerprint=spelled) as client:
        assert client.healthy()


def test_a_wrong_pin_fails_naming_both_fingerprints_and_sends_nothing(agent_tls: TlsFiles, tmp_path: Path) -> None:
    pinned = ensure_tls_dir(tmp_path / "another-host").fingerprint
    with tls_server(agent_tls) as (url, seen), AgentClient(url, TOKEN, pinned) as client:
        with pytest.raises(AgentCertificateMismatch) as caught:
            client._request("GET", "/v1/capacity", "reading capacity")
        with pytest.raises(AgentCertificateMismatch):
            client.healthy()  # an impostor is not "down": healthy() raises too
    message = str(caught.value)
    assert f"its TLS certificate has fingerprint {agent_tls.fingerprint}, but {pinned} is pinned" in message
    assert "GPUSTACK_AGENT_FINGERPRINT" in message and "the token was not sent" in message
    assert (caught.value.expected, caught.value.seen) == (pinned, agent_tls.fingerprint)
    assert not isinstance(caught.value, AgentUnreachable)
    assert TOKEN not in message
    assert seen == [], "no request reached the server"


def test_without_a_pin_a_self_signed_agent_is_refused_with_the_fix(agent_tls: TlsFiles) -> None:
    with (
        tls_server(agent_tls) as (url, seen),
        AgentClient(url, TOKEN) as client,
        pytest.raises(AgentCertificateError) as caught,
    ):
        client.capacity()
    assert "did not verify" in str(caught.value) and "fingerprint=" in str(caught.value)
    assert seen == []


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:10150", "http://0.0.0.0:10150", "http://gpu-1.lab:10150", "http://[fd00::5]:10150"]
)
def test_plain_http_to_a_non_loopback_host_is_refused_before_anything_is_sent(url: str) -> None:
    with pytest.raises(AgentInsecureEndpoint) as caught:
        AgentClient(url, TOKEN)
    message = str(caught.value)
    assert "plain HTTP to a non-loopback host" in message and "https://" in message and "fingerprint" in message
    assert TOKEN not in message


def test_plain_http_on_loopback_still_works_and_a_pin_needs_https() -> None:
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1", "http://127.8.9.10:1"):
        with AgentClient(url, TOKEN) as client:
            assert not client.healthy()  # nothing listens: unreachable, not refused
    with pytest.raises(AgentInsecureEndpoint, match="use https://127.0.0.1:1"):
        AgentClient("http://127.0.0.1:1", TOKEN, "sha256:" + "0" * 64)
    with pytest.raises(AgentInsecureEndpoint, match="must start with https://"):
        AgentClient("ftp://127.0.0.1:1", TOKEN)
    with pytest.raises(ValueError, match="64 hex digits"):
        AgentClient("https://10.0.0.5:1", TOKEN, "sha256:abcd")


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.255.0.9", "::1", "localhost", "::ffff:127.0.0.1"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.com", "128.0.0.1"))
