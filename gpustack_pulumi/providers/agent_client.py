"""A small synchronous client of the node agent's HTTP API (``runtime/``), typed with its wire models.

Providers build one per call (never keep it on a pickled provider object). The bearer token is sent as a header
and never appears in an exception message or a log line.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from gpustack_runtime.wire import (
    CapacityDocument,
    InstanceBody,
    InstanceStatus,
    ReservationBody,
    ReservationStatus,
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


class AdmissionConflict(AgentError):
    """409: the agent refused a claim that would overbook a device (another deployment got there first)."""


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
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._client = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
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
            raise AgentUnreachable(self.endpoint, what, type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
        if response.status_code == 409:
            raise AdmissionConflict(self.endpoint, what, 409, _detail(response))
        if response.status_code >= 400 and response.status_code != 404:
            raise AgentError(self.endpoint, what, response.status_code, _detail(response))
        return response

    # ----- node ---------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return self._client.get("/healthz").status_code == 200
        except httpx.TransportError:
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
