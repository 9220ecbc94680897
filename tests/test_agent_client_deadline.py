"""AgentClient deadlines (issue 11, item 12): a trickling or silent agent ends a call within its deadline with
AgentTimeout ("did not answer within N s"), which is not AgentUnreachable; a closed port is unreachable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gpustack_pulumi.providers.agent_client import AgentClient, AgentTimeout, AgentUnreachable


@contextmanager
def fake_agent(mode: str) -> Iterator[str]:
    """127.0.0.1 server: ``trickle`` sends headers, then one body byte every 0.2 s forever; ``silent``
    accepts and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                if mode == "trickle":
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                    )
                    while not stop.is_set():
                        try:
                            connection.sendall(b" ")
                        except OSError:
                            break
                        time.sleep(0.2)
                else:
                    stop.wait()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("mode", ["trickle", "silent"])
def test_a_trickling_or_silent_agent_times_out_within_the_deadline(mode: str) -> None:
    with fake_agent(mode) as url, AgentClient(url, "token", timeout_s=1.0, deadline_s=1.5) as client:
        started = time.monotonic()
        with pytest.raises(AgentTimeout, match=r"did not answer within 1(\.5)? s") as raised:
            client.capacity()
        assert time.monotonic() - started < 1.5 + 1.0 + 0.5, "at most one read timeout past the deadline"
        assert not isinstance(raised.value, AgentUnreachable)
        assert "token" not in str(raised.value)


def test_a_closed_port_is_unreachable_not_a_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with AgentClient(f"http://127.0.0.1:{port}", "token", timeout_s=1.0) as client, pytest.raises(AgentUnreachable):
        client.capacity()
