"""A real, throwaway Kubernetes API server for tests: etcd plus kube-apiserver (both built by
scripts/kube-apiserver.sh), bound to 127.0.0.1 only, on ephemeral ports, with a self-made CA, serving and client
certificates, a service-account signing key and RBAC. No kubelet, scheduler or controllers: objects are stored and
validated (schema, defaulting, admission), never run.

    with kube_apiserver() as kube:
        with kube.client() as http:   # httpx, trusting the CA, authenticated as system:masters
            http.get("/api/v1/namespaces").raise_for_status()

Binaries are looked up in $GPUSTACK_KUBE_BIN, then on PATH, then in the build cache of scripts/kube-apiserver.sh
(~/.cache/gpustack-pulumi/kube-*/bin, or under $GPUSTACK_PULUMI_CACHE).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BINARIES = ("kube-apiserver", "etcd")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
START_TIMEOUT = float(os.environ.get("GPUSTACK_KUBE_START_TIMEOUT", "180"))


def find_kube_bin() -> Path | None:
    """The directory holding both `kube-apiserver` and `etcd`, or None."""
    candidates: list[Path] = []
    if env := os.environ.get("GPUSTACK_KUBE_BIN"):
        candidates.append(Path(env))
    if on_path := shutil.which("kube-apiserver"):
        candidates.append(Path(on_path).parent)
    cache = Path(os.environ.get("GPUSTACK_PULUMI_CACHE", Path.home() / ".cache" / "gpustack-pulumi"))
    candidates.extend(sorted(cache.glob("kube-v*/bin"), reverse=True))
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in BINARIES):
            return directory
    return None


def missing_reason() -> str | None:
    """Why the API server cannot run here (a skip reason), or None when it can."""
    if find_kube_bin() is None:
        return (
            "kube-apiserver and etcd not found ($GPUSTACK_KUBE_BIN, PATH, or the scripts/kube-apiserver.sh "
            "cache); build them with `bash scripts/kube-apiserver.sh` (needs Go; .ci/run does it)"
        )
    return None


# ----- certificates ------------------------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o600)


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 sans: list[x509.GeneralName] | None = None,
                 usage: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """A CA, the API server's serving certificate (127.0.0.1, localhost, the `kubernetes` service names), an
    admin client certificate (O=system:masters) and the service-account signing key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpustack-test-kube-ca")])
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))

    server_key = ec.generate_private_key(ec.SECP256R1())
    service_ip = next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip),
                                    x509.DNSName("localhost"), x509.DNSName("kubernetes"),
                                    x509.DNSName("kubernetes.default.svc")]  # fmt: skip
    server = _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server_key,
                          ca_name, ca_key, sans=sans, usage=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
    (directory / "apiserver.crt").write_bytes(server.public_bytes(pem))
    _write_key(directory / "apiserver.key", server_key)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                            x509.NameAttribute(NameOID.COMMON_NAME, "gpustack-test-admin")])  # fmt: skip
    admin = _certificate(admin_name, admin_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    (directory / "admin.crt").write_bytes(admin.public_bytes(pem))
    _write_key(directory / "admin.key", admin_key)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(directory / "sa.key", sa_key)
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Pki(
        directory / "ca.crt",
        directory / "apiserver.crt",
        directory / "apiserver.key",
        directory / "admin.crt",
        directory / "admin.key",
        directory / "sa.key",
        directory / "sa.pub",
    )


# ----- processes -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@dataclass(frozen=True)
class KubeApiServer:
    url: str
    pki: Pki
    version: str

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for the API server: trusts its CA, authenticates as system:masters."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return httpx.Client(base_url=self.url, verify=context, timeout=60, **kwargs)


def _wait(check: str, process: subprocess.Popen[bytes], log: Path, probe: Callable[[], bool], deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{check} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if probe():
                return
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    raise RuntimeError(f"{check} not ready after {START_TIMEOUT:.0f}s ({last}):\n{_tail(log)}")


@contextlib.contextmanager
def kube_apiserver(extra_args: list[str] | None = None) -> Iterator[KubeApiServer]:
    """Start etcd and kube-apiserver on 127.0.0.1 (ephemeral ports, a temporary directory), wait for /readyz,
    yield; both are stopped and the directory removed on the way out, whatever happens."""
    bin_dir = find_kube_bin()
    if bin_dir is None:
        raise RuntimeError(missing_reason())
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gpustack-kube-") as tmp:
        root = Path(tmp)
        try:
            pki = make_pki(root / "pki")
            client_port, peer_port = free_port(), free_port()
            etcd_url = f"http://127.0.0.1:{client_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            etcd_log = root / "etcd.log"
            with etcd_log.open("wb") as out:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "etcd"), "--name", "test", "--data-dir", str(root / "etcd"),
                     "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                     "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                     "--initial-cluster", f"test={peer_url}", "--initial-cluster-state", "new",
                     "--unsafe-no-fsync", "--log-level", "warn"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                ))  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT
            _wait(
                "etcd",
                processes[0],
                etcd_log,
                lambda: httpx.get(f"{etcd_url}/health", timeout=2).json().get("health") == "true",
                deadline,
            )

            port = free_port()
            api_log = root / "kube-apiserver.log"
            with api_log.open("wb") as out:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
                     "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
                     f"--cert-dir={root / 'certs'}",
                     f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
                     f"--client-ca-file={pki.ca}",
                     f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
                     "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                     "--authorization-mode=RBAC", f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                     # No controllers run here: nothing would reconcile the `kubernetes` Service's endpoints.
                     "--endpoint-reconciler-type=none",
                     # Namespaces must exist (as in a real cluster); ServiceAccount admission is left out: no
                     # controller creates the default service accounts and no pod is ever created here.
                     "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,DefaultStorageClass,"
                     "ResourceQuota,PodSecurity",
                     "--disable-admission-plugins=ServiceAccount",
                     "--profiling=false", "--v=1", *(extra_args or [])],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                ))  # fmt: skip
            server = KubeApiServer(f"https://127.0.0.1:{port}", pki, "")
            with server.client() as http:
                _wait(
                    "kube-apiserver",
                    processes[1],
                    api_log,
                    lambda: http.get("/readyz", timeout=5).status_code == 200,
                    deadline,
                )
                version = http.get("/version").json()["gitVersion"]
            yield KubeApiServer(server.url, pki, version)
        finally:
            for process in reversed(processes):
                _stop(process)
