"""Talking to a running gateway: push its config, read its usage (``python -m gpustack_pulumi.gateway usage``).

The master key goes in a header only; it never appears in an exception message.
"""

from __future__ import annotations

import time

import httpx

from gpustack_pulumi.gateway.config import GatewayConfig

PUSH_ATTEMPTS = 5
PUSH_RETRY_DELAY_S = 1.0
TIMEOUT_S = 10.0


class GatewayError(RuntimeError):
    """The gateway refused or did not answer."""


def push_config(base_url: str, master_key: str, config: GatewayConfig) -> dict:
    """``PUT /gpustack/config``: the gateway applies it in place (requests in flight are not dropped)."""
    body = config.model_dump(mode="json")
    last = ""
    for attempt in range(PUSH_ATTEMPTS):
        try:
            response = httpx.put(
                f"{base_url.rstrip('/')}/gpustack/config",
                json=body,
                headers={"Authorization": f"Bearer {master_key}"},
                timeout=TIMEOUT_S,
            )
        except httpx.TransportError as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                return response.json()
            raise GatewayError(
                f"gateway {base_url} refused its config: HTTP {response.status_code} {response.text[:300]}"
            )
        if attempt + 1 < PUSH_ATTEMPTS:
            time.sleep(PUSH_RETRY_DELAY_S)
    raise GatewayError(f"gateway {base_url} is unreachable ({last}); check its instance on the agent")


def read_usage(base_url: str, master_key: str) -> dict:
    """``GET /gpustack/usage``: per key alias and model, requests, failures, prompt and completion tokens."""
    try:
        response = httpx.get(
            f"{base_url.rstrip('/')}/gpustack/usage",
            headers={"Authorization": f"Bearer {master_key}"},
            timeout=TIMEOUT_S,
        )
    except httpx.TransportError as error:
        raise GatewayError(f"gateway {base_url} is unreachable ({type(error).__name__})") from None
    if response.status_code != 200:
        raise GatewayError(f"gateway {base_url}: usage failed with HTTP {response.status_code}")
    return response.json()
