"""Exposure (issue 11, item 10): the agent's own TLS certificate, HTTPS serving, plain HTTP only on loopback.

The real ``gpustack-agent`` command makes the certificate (``tls init``, or the first start with ``--tls-dir``)
and serves HTTPS on a loopback port; a plain ``ssl`` client pins the certificate's SHA-256 the way the provider's
AgentClient does.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_fixtures import TOKEN
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from gpustack_runtime.cli import build_parser, config_from_args, main
from gpustack_runtime.config import is_loopback_host
from gpustack_runtime.tls import TlsSetupError, ensure_tls_dir, normalize_fingerprint

AGENT_COMMAND = Path(sys.executable).with_name("gpustack-agent")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def der_fingerprint(cert_pem: Path) -> str:
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.read_text())).hexdigest()


def test_tls_init_creates_a_pinned_p256_certificate_and_keeps_it(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    first = subprocess.run(
        [AGENT_COMMAND, "tls", "init", "--dir", str(directory), "--name", "10.20.30.40", "--name", "gpu-7.lab"],
        capture_output=True,
        text=True,
        check=True,
    )

    fingerprint = first.stdout.strip()
    assert fingerprint == der_fingerprint(directory / "cert.pem")
    assert (directory / "fingerprint").read_text() == fingerprint + "\n"
    assert "created" in first.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.20.30.40" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"gpu-7.lab", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))

    # Again (a re-install or an upgrade): the same certificate, so the pin stays valid.
    key_before = (directory / "key.pem").read_bytes()
    second = subprocess.run(
        [AGENT_COMMAND, "tls", "init", "--dir", str(directory)], capture_output=True, text=True, check=True
    )
    assert second.stdout.strip() == fingerprint and "kept" in second.stderr
    assert (directory / "key.pem").read_bytes() == key_before
    shown = subprocess.run(
        [AGENT_COMMAND, "tls", "fingerprint", "--dir", str(directory)], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == fingerprint


def test_a_half_present_or_mismatched_pair_is_refused_not_replaced(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"
    ensure_tls_dir(lonely)
    (lonely / "key.pem").unlink()
    with pytest.raises(TlsSetupError, match="key.pem does not"):
        ensure_tls_dir(lonely)
    assert (lonely / "cert.pem").exists()

    one, other = ensure_tls_dir(tmp_path / "one"), ensure_tls_dir(tmp_path / "other")
    (tmp_path / "one" / "key.pem").write_bytes(other.key.read_bytes())
    with pytest.raises(TlsSetupError, match="do not load together"):
        ensure_tls_dir(tmp_path / "one")
    assert one.fingerprint != other.fingerprint


def test_fingerprints_are_read_in_the_usual_spellings() -> None:
    digest = "ab" * 32
    expected = "sha256:" + digest
    assert normalize_fingerprint(expected.upper()) == expected
    assert normalize_fingerprint(":".join(["AB"] * 32)) == expected
    assert normalize_fingerprint(digest) == expected
    with pytest.raises(ValueError, match="64 hex digits"):
        normalize_fingerprint("sha256:abc")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gpu-1", False),
     ("", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::"])
def test_a_non_loopback_address_without_tls_is_refused_naming_the_flags(
    tmp_path: Path, token_file: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(token_file), "--state-dir", str(tmp_path / "state"), "--host", host])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--host {host} is not a loopback address" in err
    assert "--tls-dir" in err and "--insecure-http" in err
    assert TOKEN not in err


def test_insecure_http_is_an_explicit_choice(
    tmp_path: Path, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parser = build_parser()
    args = ["--token-file", str(token_file), "--state-dir", str(tmp_path / "state"), "--host", "0.0.0.0"]
    with caplog.at_level(logging.WARNING):
        config = config_from_args(parser, parser.parse_args([*args, "--insecure-http"]))
    assert config.host == "0.0.0.0" and not config.tls
    assert any("--insecure-http" in record.getMessage() for record in caplog.records)
    # With TLS the same address needs no flag; the directory's certificate is made on this first start.
    config = config_from_args(parser, parser.parse_args([*args, "--tls-dir", str(tmp_path / "tls")]))
    assert config.tls and config.tls_cert == tmp_path / "tls" / "cert.pem"
    assert (tmp_path / "tls" / "fingerprint").exists()


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key: give both"),
        (["--tls-dir", "/tmp/x", "--tls-key", "/k"], "--tls-dir: give either"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert /nonexistent.pem"),
    ],
)
def test_bad_tls_flags_exit_2_naming_the_flag(
    tmp_path: Path, token_file: Path, extra: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(token_file), "--state-dir", str(tmp_path / "state"), *extra])
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def unverified_context() -> ssl.SSLContext:
    """Takes any certificate: the test compares its digest itself (as a pinning client does)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_the_agent_serves_https_with_the_certificate_it_made(tmp_path: Path, token_file: Path) -> None:
    port = free_port()
    tls_dir = tmp_path / "tls"
    process = subprocess.Popen(
        [AGENT_COMMAND, "--host", "127.0.0.1", "--port", str(port), "--token-file", str(token_file),
         "--state-dir", str(tmp_path / "state"), "--devices", "none", "--tls-dir", str(tls_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "the agent exited"
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                    unverified_context().wrap_socket(raw) as tls,
                ):
                    seen = "sha256:" + hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
                break
            except OSError:
                assert time.monotonic() < deadline, "the agent did not serve TLS in time"
                time.sleep(0.1)
        assert seen == (tls_dir / "fingerprint").read_text().strip() == der_fingerprint(tls_dir / "cert.pem")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=unverified_context(), timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            capacity = client.get("/v1/capacity", headers={"Authorization": f"Bearer {TOKEN}"})
            assert capacity.status_code == 200 and capacity.json()["devices"] == []
        # Plain HTTP to the TLS port gets no API answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3).raise_for_status()
    finally:
        process.terminate()
        process.wait(15)
