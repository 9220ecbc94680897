"""Dynamic provider: an API key of the cluster's gateway, generated once and kept (as a secret) in state.

The key itself is an output only (secret); what the gateway receives is its SHA-256 with the key's scope and
limits. Changing the scope, the limits, the expiry or ``revoked`` updates the key in place (the same key,
applied at the gateway at the next ``up``); changing ``rotation`` makes a new key.
"""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult
from pydantic import ValidationError

from gpustack_pulumi.gateway.config import KEY_PREFIX, KeyRecord, key_sha256

KEY_BYTES = 32
RECORD_FIELDS = ("alias", "models", "expires_at", "rpm", "tpm", "token_budget", "revoked")


def key_record(props: dict[str, Any]) -> dict[str, Any]:
    """The gateway's record of the key (no secret), validated."""
    fields = {k: props.get(k) for k in RECORD_FIELDS if props.get(k) is not None}
    return KeyRecord.model_validate({**fields, "key_sha256": props["key_sha256"]}).model_dump(mode="json")


class ApiKeyProvider(ResourceProvider):
    """Plain data only on ``self``: the object is pickled into state."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        del olds
        fields = {k: news.get(k) for k in RECORD_FIELDS if news.get(k) is not None}
        try:
            KeyRecord.model_validate({**fields, "key_sha256": "0" * 64})
        except ValidationError as error:
            failures = [
                CheckFailure(str(item["loc"][0]) if item["loc"] else "alias", item["msg"]) for item in error.errors()
            ]
            return CheckResult(news, failures)
        return CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        outs = {**props, "key": key, "key_sha256": key_sha256(key)}
        outs["record"] = key_record(outs)
        return CreateResult(id_=f"apikey-{props['alias']}-{outs['key_sha256'][:8]}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        rotated = olds.get("rotation") != news.get("rotation")
        changed = [k for k in RECORD_FIELDS if olds.get(k) != news.get(k)]
        return DiffResult(changes=rotated or bool(changed), replaces=["rotation"] if rotated else [])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = {**news, "key": olds["key"], "key_sha256": olds["key_sha256"]}
        outs["record"] = key_record(outs)
        return UpdateResult(outs=outs)
