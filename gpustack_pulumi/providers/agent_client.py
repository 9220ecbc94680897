"""A small synchronous client of the node agent's HTTP API (``runtime/``), typed with its wire models.

Providers build one per call (never keep it on a pickled provider object). The bearer token is sent as a header
and never appears in an exception message or a log line.

The token lets its holder run any command line on the node, so it never crosses a network in clear text:

- ``https://`` agents are verified by their certificate's pinned SHA-256 fingerprint (``fingerprint=``, what the
  agent's install prints as ``GPUSTACK_AGENT_FINGERPRINT=sha256:...``), the way SSH host keys are pinned. The
  check runs right after the TLS handshake, before a byte of the request (and so the token) is sent; a
  different certificate fails with :class:`AgentCertificateMismatch` naming both fingerprints. Without a pin the
  certificate must verify against the system's certificate authorities and name the host (standard HTTPS).
- ``http://`` is accepted for loopback hosts only (127.0.0.0/8, ``::1``, ``localhost``); any other plain-HTTP
  URL is refused with :class:`AgentInsecureEndpoint` before anything is sent.
"""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.parse
from typing import Any

import httpx
from gpustack_runtime.wire import (
    CapacityDocument,
    InstanceBody,
    InstanceStatus,
    ReservationBody,
    ReservationStatus,
    is_loopback_host,
    normalize_fingerprint,
)

DEFAULT_TIMEOUT_S = 10.0
"""Per network operation (connect, one read, one write)."""

DEFAULT_DEADLINE_S = 60.0
"""Per call, all of it: an agent that trickles its answer a byte at a time resets every per-read timeout, so
without an overall deadline it could hold ``pulumi up`` forever. A call ends at most one read timeout after
its deadline."""


class AgentError(RuntimeError):
    """The agent answered with an error; ``status`` is the HTTP status, ``detail`` its explanation."""

    def __init__(self, endpoint: str, what: str, status: int, detail: Any) -> None:
        self.endpoint = endpoint
        self.status = status
        self.detail = detail
        super().__init__(f"agent {endpoint}: {what} failed with HTTP {status}: {_format_detail(detail)}")


class AgentUnreachable(AgentError):
    """The agent did not answer at all (connection refused, timeout, DNS)."""

    def __init__(self, endpoint: str, what: str, reason: str) -> None:
        RuntimeError.__init__(
            self,
            f"agent {endpoint} is unreachable ({what}: {reason}); check that the node is up and the agent runs "
            "(`systemctl status gpustack-agent` on the host), and that this machine can reach its port",
        )
        self.endpoint = endpoint
        self.status = 0
        self.detail = reason


class AgentTimeout(AgentError):
    """The agent accepted the connection but did not answer (completely) in time: it may be hung or
    overloaded, and it may still be doing what it was asked. Not :class:`AgentUnreachable`: an engine behind a
    hung agent is not gone."""

    def __init__(self, endpoint: str, what: str, seconds: float, reason: str) -> None:
        RuntimeError.__init__(
            self,
            f"agent {endpoint} did not answer within {seconds:g} s ({what}: {reason}); it may be hung or "
            "overloaded: check `systemctl status gpustack-agent` and its log on the host, then retry",
        )
        self.endpoint = endpoint
        self.status = 0
        self.detail = reason
        self.seconds = seconds


class AgentInsecureEndpoint(AgentError):
    """The URL would send the token in clear text over a network (``http://`` to a non-loopback host), or is
    not an agent URL at all. Nothing was sent."""

    def __init__(self, endpoint: str, reason: str) -> None:
        RuntimeError.__init__(self, f"agent {endpoint}: {reason}")
        self.endpoint = endpoint
        self.status = 0
        self.detail = reason


class AgentCertificateError(AgentError):
    """The TLS handshake succeeded but the agent's certificate is not the one trusted (a pinned fingerprint that
    differs, or, without a pin, a certificate no authority vouches for). Nothing was sent; not
    :class:`AgentUnreachable`: something answers at that address, and it may not be the agent."""

    def __init__(self, endpoint: str, what: str, reason: str) -> None:
        RuntimeError.__init__(self, f"agent {endpoint}: {what} refused: {reason}")
        self.endpoint = endpoint
        self.status = 0
        self.detail = reason


class AgentCertificateMismatch(AgentCertificateError):
    """The agent presented a certificate whose fingerprint is not the pinned one."""

    def __init__(self, endpoint: str, what: str, expected: str, seen: str) -> None:
        super().__init__(
            endpoint,
            what,
            f"its TLS certificate has fingerprint {seen}, but {expected} is pinned. If the agent was reinstalled "
            "with a new certificate, pin the fingerprint its install printed (GPUSTACK_AGENT_FINGERPRINT=...; "
            "on the host: gpustack-agent tls fingerprint --dir /etc/gpustack-agent/tls); otherwise something "
            "else answers at this address: the token was not sent",
        )
        self.expected = expected
        self.seen = seen


class AdmissionConflict(AgentError):
    """409: the agent refused a claim that would overbook a device (another deployment got there first)."""


class _PinMismatch(ssl.SSLError):
    """Raised inside the handshake path; :meth:`AgentClient._request` turns it into AgentCertificateMismatch."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"certificate fingerprint {seen} is not the pinned {expected}")
        self.expected = expected
        self.seen = seen


class PinnedSSLContext(ssl.SSLContext):
    """A client context that trusts exactly one certificate: the one whose DER bytes hash to the pin.

    CA and host-name checks are off (a self-signed certificate names no authority, and agents are reached by
    address); instead :meth:`wrap_socket`, which httpcore calls to upgrade each new connection and which
    completes the handshake before it returns, compares the peer certificate's SHA-256 with the pin and closes
    the connection on a mismatch, before any request bytes are written."""

    pin: str

    def __new__(cls, pin: str) -> PinnedSSLContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        context.pin = normalize_fingerprint(pin)
        return context

    def __init__(self, pin: str) -> None:
        self.check_hostname = False
        self.verify_mode = ssl.CERT_NONE
        self.minimum_version = ssl.TLSVersion.TLSv1_2

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = True
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        der = wrapped.getpeercert(binary_form=True)
        seen = "sha256:" + hashlib.sha256(der or b"").hexdigest()
        if seen != self.pin:
            wrapped.close()
            raise _PinMismatch(self.pin, seen)
        return wrapped

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        # TLS inside TLS (an https:// proxy): the handshake happens later, out of reach of the check above.
        raise ssl.SSLError("a pinned agent connection cannot go through an HTTPS proxy; set NO_PROXY for the agent")


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx/httpcore exception, if any (walks the cause/context chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _format_detail(detail: Any) -> str:
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    return str(detail)


class AgentClient:
    """Calls one agent. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        fingerprint: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        """``fingerprint``: the agent certificate's pinned SHA-256 (``sha256:<hex>``) for an ``https://``
        endpoint. Raises :class:`AgentInsecureEndpoint` for a plain-HTTP URL to a non-loopback host (or a URL
        that is not http/https), and for a pin given with ``http://``; ValueError for a malformed pin."""
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        verify: ssl.SSLContext | bool = True
        parsed = urllib.parse.urlsplit(self.endpoint)
        host = parsed.hostname or ""
        if parsed.scheme == "https":
            if self.fingerprint is not None:
                verify = PinnedSSLContext(self.fingerprint)
        elif parsed.scheme == "http":
            if self.fingerprint is not None:
                raise AgentInsecureEndpoint(
                    self.endpoint,
                    f"a certificate fingerprint is pinned but the URL is plain HTTP; use https://{parsed.netloc}",
                )
            if not is_loopback_host(host):
                raise AgentInsecureEndpoint(
                    self.endpoint,
                    "plain HTTP to a non-loopback host would send the bearer token (which runs commands on the "
                    f"node) in clear text; use https://{parsed.netloc} with the agent's certificate fingerprint "
                    "(install.sh prints GPUSTACK_AGENT_FINGERPRINT=sha256:...; the agent serves TLS with "
                    "--tls-dir), or reach the agent through loopback (an SSH tunnel)",
                )
        else:
            raise AgentInsecureEndpoint(
                self.endpoint, "the agent URL must start with https:// (or http:// on loopback)"
            )
        self._client = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            verify=verify,
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """One call within :attr:`deadline_s`: the body is read in chunks and the deadline checked after
        each, with every network wait bounded by what is left of it."""
        started = time.monotonic()
        deadline = started + self.deadline_s
        per_operation = min(self.timeout_s, self.deadline_s)
        request = self._client.build_request(method, path, timeout=httpx.Timeout(per_operation), **kwargs)
        try:
            response = self._client.send(request, stream=True)
            try:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise AgentTimeout(
                            self.endpoint, what, self.deadline_s, "the answer was still arriving at the deadline"
                        )
                # What response.read() would have stored (httpx keeps a read body in _content).
                response._content = b"".join(chunks)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise AgentUnreachable(self.endpoint, what, f"ConnectTimeout: {exc}") from None
            raise AgentTimeout(self.endpoint, what, per_operation, type(exc).__name__) from None
        return response

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._send(method, path, what, **kwargs)
        except httpx.TransportError as exc:
            self._raise_tls_failure(exc, what)
            raise AgentUnreachable(self.endpoint, what, type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
        if response.status_code == 409:
            raise AdmissionConflict(self.endpoint, what, 409, _detail(response))
        if response.status_code >= 400 and response.status_code != 404:
            raise AgentError(self.endpoint, what, response.status_code, _detail(response))
        return response

    def _raise_tls_failure(self, exc: BaseException, what: str) -> None:
        """Raise AgentCertificateError when ``exc`` is a certificate refusal (not a network failure)."""
        failure = _tls_failure(exc)
        if isinstance(failure, _PinMismatch):
            raise AgentCertificateMismatch(self.endpoint, what, failure.expected, failure.seen) from None
        if isinstance(failure, ssl.SSLCertVerificationError):
            raise AgentCertificateError(
                self.endpoint,
                what,
                f"its TLS certificate did not verify ({failure.verify_message or failure}); an agent with a "
                "self-signed certificate needs its fingerprint pinned (AgentClient(url, token, fingerprint=...), "
                "from GPUSTACK_AGENT_FINGERPRINT=... in its install output): the token was not sent",
            ) from None

    # ----- node ---------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """True when the agent answers /healthz. False when it does not answer; a certificate that is not the
        pinned one raises :class:`AgentCertificateError` (an impostor is not a down agent)."""
        try:
            return self._client.get("/healthz").status_code == 200
        except httpx.TransportError as exc:
            self._raise_tls_failure(exc, "checking health")
            return False

    def capacity(self) -> CapacityDocument:
        response = self._request("GET", "/v1/capacity", "reading capacity")
        return CapacityDocument.model_validate(response.json())

    # ----- reservations --------------------------------------------------------------------------------
    def put_reservation(self, reservation_id: str, body: ReservationBody) -> ReservationStatus:
        response = self._request(
            "PUT", f"/v1/reservations/{reservation_id}", f"reserving {reservation_id}", json=body.model_dump()
        )
        return ReservationStatus.model_validate(response.json())

    def get_reservation(self, reservation_id: str) -> ReservationStatus | None:
        response = self._request("GET", f"/v1/reservations/{reservation_id}", f"reading {reservation_id}")
        if response.status_code == 404:
            return None
        return ReservationStatus.model_validate(response.json())

    def delete_reservation(self, reservation_id: str) -> bool:
        response = self._request("DELETE", f"/v1/reservations/{reservation_id}", f"releasing {reservation_id}")
        return response.status_code != 404

    # ----- instances ------------------------------------------------------------------------------------
    def put_instance(self, instance_id: str, body: InstanceBody) -> InstanceStatus:
        response = self._request(
            "PUT", f"/v1/instances/{instance_id}", f"starting {instance_id}", json=body.model_dump()
        )
        return InstanceStatus.model_validate(response.json())

    def get_instance(self, instance_id: str) -> InstanceStatus | None:
        response = self._request("GET", f"/v1/instances/{instance_id}", f"reading {instance_id}")
        if response.status_code == 404:
            return None
        return InstanceStatus.model_validate(response.json())

    def list_instances(self) -> list[InstanceStatus]:
        response = self._request("GET", "/v1/instances", "listing instances")
        return [InstanceStatus.model_validate(item) for item in response.json()]

    def delete_instance(self, instance_id: str) -> bool:
        response = self._request("DELETE", f"/v1/instances/{instance_id}", f"stopping {instance_id}")
        return response.status_code != 404

    def logs(self, instance_id: str, tail: int = 50) -> str:
        response = self._request("GET", f"/v1/instances/{instance_id}/logs", "reading logs", params={"tail": tail})
        return "" if response.status_code == 404 else response.text

    def wait_ready(self, instance_id: str, *, timeout_s: float, poll_s: float = 0.5) -> InstanceStatus:
        """Wait until the instance is ``ready``; on ``failed`` or timeout raise with the engine's last log lines."""
        deadline = time.monotonic() + timeout_s
        status: InstanceStatus | None = None
        while time.monotonic() < deadline:
            status = self.get_instance(instance_id)
            if status is None:
                raise AgentError(self.endpoint, f"waiting for {instance_id}", 404, "the instance disappeared")
            if status.state == "ready":
                return status
            if status.state == "failed":
                break
            time.sleep(poll_s)
        tail = self.logs(instance_id, tail=20).strip()
        state = status.state if status else "unknown"
        reason = "failed" if state == "failed" else f"not ready after {timeout_s:.0f} s (state {state})"
        raise AgentError(
            self.endpoint,
            f"starting {instance_id}",
            0,
            f"engine {reason}; last log lines:\n{tail or '(no output)'}",
        )


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body
