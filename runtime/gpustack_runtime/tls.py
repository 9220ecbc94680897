"""The agent's TLS certificate: created once per host, pinned by its clients.

The agent serves its API over TLS with a self-signed certificate that the host makes for itself
(``gpustack-agent tls init --dir D``, which ``install.sh`` runs, or the first start with ``--tls-dir D``). No
certificate authority vouches for it: clients pin the SHA-256 digest of the certificate's DER bytes, the way
SSH clients pin host keys, and the install prints that fingerprint for them (``GPUSTACK_AGENT_FINGERPRINT=``).

A directory holds three files:

- ``cert.pem``: the certificate (ECDSA P-256, SHA-256 signature), mode 0644;
- ``key.pem``: its private key, unencrypted PKCS#8, mode 0600 (the directory is 0700 too);
- ``fingerprint``: ``sha256:<64 lowercase hex digits>`` and a newline.

An existing certificate is kept (re-installs and upgrades keep the pin valid); a directory with only one of the
two files, or a key that does not match the certificate, is an error, never silently replaced.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpustack_runtime.wire import FINGERPRINT_PREFIX, normalize_fingerprint  # noqa: F401 (the tls API names it)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
FINGERPRINT_FILE = "fingerprint"

CERTIFICATE_VALIDITY_DAYS = 3650
"""Ten years. The pin is the certificate itself, so expiry protects nothing here (pinning clients skip CA and date
checks); a short validity would only make agents stop answering the day it ran out."""

class TlsSetupError(RuntimeError):
    """The TLS directory or files are unusable; the message names the file and what to do."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str
    """``sha256:<hex>`` of the certificate's DER bytes."""
    created: bool
    """True when this call made the certificate (False: an existing one was kept)."""


def fingerprint_of_der(der: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def fingerprint_of_pem(pem: bytes | str) -> str:
    """The pin of the first certificate in PEM text."""
    text = pem.decode("ascii", errors="replace") if isinstance(pem, bytes) else pem
    try:
        der = ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----") :])
    except ValueError as error:
        raise TlsSetupError(f"not a PEM certificate ({error})") from None
    return fingerprint_of_der(der)


def default_names(extra: Iterable[str] = ()) -> list[str]:
    """The subject alternative names of a new certificate: the given names first, then the host's name, fully
    qualified name, the addresses that name resolves to, and loopback. Clients pin the fingerprint and do not
    check names; the names only tell a person which host the certificate belongs to."""
    names: list[str] = [name for name in extra if name]
    hostname = socket.gethostname()
    names += [hostname, socket.getfqdn()]
    with contextlib.suppress(OSError, UnicodeError):
        names += [info[4][0] for info in socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)]
    names += ["localhost", "127.0.0.1", "::1"]
    unique: list[str] = []
    for name in names:
        name = name.split("%", 1)[0]  # a link-local address's zone is not part of an IP SAN
        if name and name not in ("0.0.0.0", "::") and name not in unique:
            unique.append(name)
    return unique


def _san_entries(names: Iterable[str]) -> list:
    from cryptography import x509

    entries: list = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            with contextlib.suppress(ValueError, UnicodeError):
                entries.append(x509.DNSName(name.encode("idna").decode("ascii")))
    return entries


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (never wider for a moment)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def create_certificate(names: list[str]) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key, both PEM: ECDSA P-256, SHA-256, ``names`` as SANs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names[0] if names else "gpustack-agent")[:64])])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of client and host differ a little
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    sans = _san_entries(names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def check_pair(cert: Path, key: Path) -> str:
    """The fingerprint of ``cert`` after checking that ``key`` is its private key (what the server would
    find out at its first handshake, said here with the file names)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise TlsSetupError(
            f"TLS certificate {cert} and key {key} do not load together ({error}); remove both to create a new "
            "pair (clients must then pin the new fingerprint)"
        ) from None
    try:
        return fingerprint_of_pem(cert.read_bytes())
    except OSError as error:
        raise TlsSetupError(f"cannot read TLS certificate {cert}: {error.strerror or error}") from None


def ensure_tls_dir(directory: Path, names: Iterable[str] = ()) -> TlsFiles:
    """The certificate in ``directory``, created when the directory holds none (the directory too, 0700).
    Writes ``fingerprint`` when it is missing or stale. Raises TlsSetupError."""
    cert, key, pin = directory / CERT_FILE, directory / KEY_FILE, directory / FINGERPRINT_FILE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        has_cert, has_key = cert.exists(), key.exists()
        created = False
        if has_cert != has_key:
            present, missing = (cert, key) if has_cert else (key, cert)
            raise TlsSetupError(
                f"{present} exists but {missing} does not; restore it, or remove {present} to create a new pair"
            )
        if not has_cert:
            directory.chmod(0o700)
            cert_pem, key_pem = create_certificate(default_names(names))
            _write_private(key, key_pem, 0o600)
            _write_private(cert, cert_pem, 0o644)
            created = True
        fingerprint = check_pair(cert, key)
        current = pin.read_text().strip() if pin.exists() else ""
        if current != fingerprint:
            _write_private(pin, (fingerprint + "\n").encode(), 0o644)
    except OSError as error:
        raise TlsSetupError(
            f"TLS directory {directory}: {error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        ) from None
    return TlsFiles(cert, key, fingerprint, created)
