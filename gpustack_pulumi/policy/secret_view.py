"""The analyzer's view of secret values, for the secrets policy.

The Pulumi engine sends a policy pack each resource's inputs with secrets still marked, but pulumi-policy's
Python analyzer unwraps them before a policy sees them, so "is this token a secret?" cannot be asked. The pack
(``pack/__main__.py``) calls :func:`keep_secrets_in_analyzer` before it serves: secret values then reach the
policies as ``pulumi_policy.Secret`` objects, which :func:`gpustack_pulumi.policy.checks.reveal` unwraps for
every other check.
"""

from __future__ import annotations

from typing import Any

from gpustack_pulumi.policy.checks import SECRET_SIG, SIG_KEY


def deserialize_keeping_secrets(props: dict[str, Any], proxy_secrets: bool = False) -> dict[str, Any]:
    """pulumi_policy's ``deserialize_properties`` with secrets kept as ``Secret`` (assets as it reads them)."""
    del proxy_secrets
    return {key: _keep(value) for key, value in props.items()}


def _keep(value: Any) -> Any:
    from pulumi_policy import Secret
    from pulumi_policy import deserialize as upstream

    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return Secret(_keep(value.get("value")))
        if SIG_KEY in value:
            return upstream._deserialize_property(value)  # assets and archives
        return {key: _keep(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keep(item) for item in value]
    return value


def keep_secrets_in_analyzer() -> None:
    """Make pulumi-policy's analyzer hand secrets to the policies as ``Secret`` objects (see the module doc)."""
    import pulumi_policy.policy as analyzer

    analyzer.deserialize_properties = deserialize_keeping_secrets  # type: ignore[assignment]
