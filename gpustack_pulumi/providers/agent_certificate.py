"""Dynamic provider: a TLS certificate for agents whose hosts Pulumi does not log into (Kubernetes pods).

An SSH host's agent makes its own certificate and the install prints its fingerprint. A DaemonSet's agent cannot
report one back to Pulumi, so the certificate is made here once (ECDSA P-256, self-signed, with the runtime's
own :func:`gpustack_runtime.tls.create_certificate`), kept in state (the key as a secret), and handed to the
agents in the pool's Secret; clients pin its fingerprint. Changing ``names`` or ``rotation`` replaces it.
"""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider


class AgentCertificateProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        from gpustack_runtime.tls import create_certificate, fingerprint_of_pem

        names = [str(name) for name in props.get("names") or []]
        cert_pem, key_pem = create_certificate(names)
        outs = {**props, "cert_pem": cert_pem.decode(), "key_pem": key_pem.decode(),
                "fingerprint": fingerprint_of_pem(cert_pem)}  # fmt: skip
        return CreateResult(id_=f"agent-cert-{secrets.token_hex(4)}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in ("names", "rotation") if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)
