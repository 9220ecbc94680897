"""Dynamic provider: a random agent token, generated once and kept (as a secret) in state."""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider

TOKEN_BYTES = 32


class AgentTokenProvider(ResourceProvider):
    """Creates a URL-safe random token; changing ``rotation`` replaces it."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        return CreateResult(id_=f"token-{secrets.token_hex(4)}", outs={**props, "token": token})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        rotated = olds.get("rotation") != news.get("rotation")
        return DiffResult(changes=rotated, replaces=["rotation"] if rotated else [])
