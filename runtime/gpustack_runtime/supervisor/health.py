"""The readiness probe: one ``GET`` over a plain asyncio stream (no HTTP client dependency)."""

from __future__ import annotations

import asyncio
import contextlib

HEALTH_PROBE_TIMEOUT_SECONDS = 2.0
"""Connect + request + status line. A loaded engine still answers ``/v1/models`` in milliseconds; one that
takes seconds is not serving."""


async def probe_http_ok(host: str, port: int, path: str, timeout: float = HEALTH_PROBE_TIMEOUT_SECONDS) -> bool:
    """True when ``GET http://host:port{path}`` answers status 200 within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gpustack-runtime\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError, UnicodeEncodeError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.split(maxsplit=2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == b"200"
