"""A real software TPM (swtpm) per test, with an EK certificate from a CA the test makes.

``swtpm_setup --create-ek-cert`` asks ``swtpm_localca`` to sign the EK certificate; we point
``swtpm_localca`` (through a config file of our own, never /etc's) at a CA key and certificate
made here with cryptography, so the verifier's EK anchor is one the test holds. Each TPM has its
own state directory and ports, so no test sees another's keys, PCRs or NV counters.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# The TSS logs each probe of an absent NV index (the EK template indices) as an error.
os.environ.setdefault("TSS2_LOG", "all+NONE")

SETUP_TIMEOUT = 60  # seconds; swtpm_setup creates two EKs and two certificates
START_TIMEOUT = 10  # seconds for swtpm to accept connections


@dataclass(frozen=True)
class EkCa:
    """A TPM manufacturer's CA, made for one test."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ek_ca(name: str = "Veritee test TPM manufacturer CA") -> EkCa:
    """A self-signed CA that may sign EK certificates (swtpm_cert needs an RSA key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return EkCa(cert=cert, key=key)


def _free_port_pair() -> int:
    """A port P with P+1 also free (swtpm's server and control channels)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for swtpm")


@dataclass
class Swtpm:
    """A running swtpm: its TCTI string, its state directory and the CA behind its EK cert."""

    dir: Path
    state: Path
    ca: EkCa
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        """Start (or restart, after stop) the TPM on its state, with a TPM2_Startup(CLEAR):
        a power cycle, so the PCRs start at zero and NV survives."""
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
                "--log",
                f"file={self.dir / 'swtpm.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited: {(self.dir / 'swtpm.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("swtpm did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A reboot: the same TPM (keys, NV), PCRs reset."""
        self.stop()
        self.start()


def provision_swtpm(base: Path, ca: EkCa) -> Swtpm:
    """A fresh TPM state under ``base`` with EKs (RSA and ECC) certified by ``ca``."""
    if shutil.which("swtpm_setup") is None:
        pytest.skip("swtpm is not installed (scripts/setup.sh --test installs it)")
    base.mkdir(parents=True, exist_ok=True)
    state = base / "state"
    state.mkdir()
    ca_dir = base / "localca"
    ca_dir.mkdir()
    (ca_dir / "signkey.pem").write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (ca_dir / "issuercert.pem").write_bytes(ca.pem)
    (ca_dir / "certserial").write_text("1\n")
    localca_conf = base / "swtpm-localca.conf"
    localca_conf.write_text(
        f"statedir = {ca_dir}\n"
        f"signingkey = {ca_dir / 'signkey.pem'}\n"
        f"issuercert = {ca_dir / 'issuercert.pem'}\n"
        f"certserial = {ca_dir / 'certserial'}\n"
    )
    localca_opts = base / "swtpm-localca.options"
    localca_opts.write_text(
        "--platform-manufacturer Veritee\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    setup_conf = base / "swtpm_setup.conf"
    setup_conf.write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {localca_conf}\n"
        f"create_certs_tool_options = {localca_opts}\n"
        "active_pcr_banks = sha256\n"
    )
    proc = subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpmstate",
            str(state),
            "--create-ek-cert",
            "--create-platform-cert",
            "--config",
            str(setup_conf),
            "--overwrite",
            "--logfile",
            str(base / "swtpm_setup.log"),
        ],
        capture_output=True,
        timeout=SETUP_TIMEOUT,
        check=False,
        env={"HOME": str(base), "XDG_CONFIG_HOME": str(base), "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        log = (base / "swtpm_setup.log").read_text(errors="replace")
        raise RuntimeError(f"swtpm_setup failed: {proc.stderr.decode()} {log}")
    return Swtpm(dir=base, state=state, ca=ca, port=_free_port_pair())


@pytest.fixture
def ek_ca() -> EkCa:
    return make_ek_ca()


@pytest.fixture
def swtpm(tmp_path: Path, ek_ca: EkCa) -> Iterator[Swtpm]:
    """A running swtpm of this test alone; yields it (``swtpm.tcti`` for the TSS)."""
    tpm = provision_swtpm(tmp_path / "swtpm", ek_ca)
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()
