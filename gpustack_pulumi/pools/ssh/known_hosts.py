"""Pinned SSH host keys: find a host's key in OpenSSH ``known_hosts`` text (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT").

A host key is handed to ``pulumi_command.remote`` as one ``"<key type> <base64 key>"`` line (the public-key form
of ``ssh-keyscan`` output and of ``/etc/ssh/ssh_host_*_key.pub`` without the comment). Nothing here ever accepts
a key it was not given: a host without a pinned key is an error at preview.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

DEFAULT_SSH_PORT = 22
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
"""Key types OpenSSH 9 offers as host keys (ssh-dss is gone since OpenSSH 9.8)."""
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class HostKeyError(ValueError):
    """A host key is malformed or missing; the message says which host and what to do."""


def normalize_host_key(text: str) -> str:
    """``"<type> <base64>"`` from a public-key line (a trailing comment is dropped). Raises HostKeyError."""
    fields = text.strip().split()
    if len(fields) < 2:
        raise HostKeyError(f"host key '{text.strip()[:40]}' must look like 'ssh-ed25519 AAAA...' (ssh-keyscan HOST)")
    key_type, blob = fields[0], fields[1]
    if key_type not in KEY_TYPES:
        raise HostKeyError(f"host key type '{key_type}' is not one of {', '.join(KEY_TYPES)}")
    if not _BASE64.match(blob):
        raise HostKeyError(f"host key of type {key_type} is not base64")
    try:
        decoded = base64.b64decode(blob, validate=True)
    except binascii.Error as error:
        raise HostKeyError(f"host key of type {key_type} is not base64: {error}") from error
    # The blob starts with its own type name (RFC 4253 §6.6): a pasted key of another type is caught here.
    if decoded[4 : 4 + len(key_type)] != key_type.encode():
        raise HostKeyError(f"host key blob does not hold a {key_type} key")
    return f"{key_type} {blob}"


def _host_patterns(address: str, port: int) -> set[str]:
    return {address} if port == DEFAULT_SSH_PORT else {f"[{address}]:{port}"}


def _hashed_entry_matches(entry: str, names: set[str]) -> bool:
    """``|1|salt|hash``: HMAC-SHA1 of the host name keyed with the salt (OpenSSH HashKnownHosts)."""
    try:
        _, magic, salt_b64, hash_b64 = entry.split("|")
        salt, wanted = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
    except (ValueError, binascii.Error):
        return False
    if magic != "1":
        return False
    return any(hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), wanted) for name in names)


def find_host_key(known_hosts: str, address: str, port: int = DEFAULT_SSH_PORT) -> str | None:
    """The first key for ``address:port`` in known_hosts text, as ``"<type> <base64>"``; None when absent.
    A key listed under ``@revoked`` is refused (HostKeyError); ``@cert-authority`` lines are not host keys;
    negated and wildcard patterns are not matched (pin hosts by their exact name)."""
    names = _host_patterns(address, port)
    revoked: set[str] = set()
    found: str | None = None
    for raw_line in known_hosts.splitlines():
        fields = raw_line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] == "@revoked" and len(fields) >= 4:
            revoked.add(normalize_host_key(" ".join(fields[2:4])))
            continue
        if fields[0].startswith("@") or len(fields) < 3 or found is not None:
            continue
        hosts_field = fields[0]
        if hosts_field.startswith("|"):
            matched = _hashed_entry_matches(hosts_field, names)
        else:
            matched = bool(names & set(hosts_field.split(",")))
        if matched:
            found = normalize_host_key(" ".join(fields[1:3]))
    if found is not None and found in revoked:
        raise HostKeyError(f"the known_hosts key of {address} is marked @revoked; pin the host's new key")
    return found
