"""Transport security on the services: TLS 1.3 from files or self-signed, and the tokens and
owners' requests that must not cross a network in clear or reach another app.

Real processes: ``veritee verifier serve``, ``veritee secrets serve`` and ``veritee node start``
on this machine. A non-loopback peer is this machine's own non-loopback address (a packet to
it does not take the loopback interface's word for where it came from).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from veritee import servicetls
from veritee.servicetls import (
    PlainTransport,
    carried_privately,
    client_verify,
    fingerprint,
    is_loopback,
)
from veritee.verifier.client import VerifierClient
from veritee.verifier.errors import VerifierUnreachable

from .conftest import Device
from .test_secrets_service import write_config
from .test_verifier_service import Server, start_verifier


def _external_address() -> str | None:
    """An address of this machine that is not loopback, or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a source address
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


EXTERNAL = _external_address()
needs_external = pytest.mark.skipif(
    EXTERNAL is None, reason="this machine has no non-loopback IPv4 address"
)


@pytest.fixture(scope="module")
def open_verifier(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A verifier listening on every address, in plain HTTP (as an operator might by mistake)."""
    root = tmp_path_factory.mktemp("verifier-open")
    server = start_verifier(root / "home", root / "state", "--host", "0.0.0.0")
    yield server
    server.stop()


@needs_external
def test_the_provisioning_token_is_refused_over_plain_http_from_another_host(
    open_verifier: Server,
) -> None:
    """Attack: an eavesdropper on the network reads the token off a cleartext request. The
    verifier refuses such a request (so an operator learns at once, not after the token is
    gone), while loopback, where no network sees it, still works."""
    port = open_verifier.url.rsplit(":", 1)[1]
    headers = {"Authorization": f"Bearer {open_verifier.token}"}
    over_lan = httpx.get(
        f"http://{EXTERNAL}:{port}/provisioning/v1/state", headers=headers, timeout=30
    )
    assert over_lan.status_code == 403, over_lan.text
    problem = over_lan.json()
    assert "plain HTTP" in problem["detail"] and open_verifier.token not in over_lan.text
    local = httpx.get(f"{open_verifier.url}/provisioning/v1/state", headers=headers, timeout=30)
    assert local.status_code == 200, local.text


@needs_external
def test_the_client_refuses_to_send_the_token_over_plain_http_to_another_host(
    open_verifier: Server, tmp_path: Path
) -> None:
    """The other side of the same attack: the token never leaves this machine in clear,
    from the library or the CLI (one error line, before any request)."""
    port = open_verifier.url.rsplit(":", 1)[1]
    with pytest.raises(PlainTransport, match="plain HTTP"):
        VerifierClient(f"http://{EXTERNAL}:{port}", token=open_verifier.token)
    proc = open_verifier.cli(
        tmp_path, "verifier", "provision", "--verifier", f"http://{EXTERNAL}:{port}",
        "--token", open_verifier.token, "show",
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "refusing to send" in err and "Traceback" not in err, err
    assert open_verifier.token not in err
    # Loopback, where no network sees it, still works, as does a token-less client off it.
    assert open_verifier.url.startswith("http://127.0.0.1:")
    with VerifierClient(open_verifier.url, token=open_verifier.token) as client:
        assert client.state()["active-policy"] == "default"
    with VerifierClient(f"http://{EXTERNAL}:{port}") as client:
        assert "ear-verification-key" in client.discovery()


def test_the_decision_of_what_counts_as_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"]))
    assert all(map(is_loopback, ["::ffff:127.0.0.1", "app.localhost"]))
    assert not any(map(is_loopback, ["192.0.2.2", "10.0.0.1", "0.0.0.0", "example.com", ""]))
    assert not any(map(is_loopback, ["127.0.0.1.evil.example", "::ffff:192.0.2.2"]))
    assert carried_privately("https", "192.0.2.2") and carried_privately("http", "127.0.0.1")
    assert not carried_privately("http", "192.0.2.2") and not carried_privately("http", None)


@pytest.fixture(scope="module")
def tls_verifier(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A verifier on every address, over TLS with its self-signed certificate."""
    root = tmp_path_factory.mktemp("verifier-tls")
    server = start_verifier(
        root / "home", root / "state", "--host", "0.0.0.0", "--tls-self-signed", "--workers", "2"
    )
    yield server
    server.stop()


def _https(server: Server, host: str) -> str:
    return f"https://{host}:{server.url.rsplit(':', 1)[1]}"


def test_the_self_signed_certificate_is_private_and_printed_with_its_fingerprint(
    tls_verifier: Server,
) -> None:
    assert tls_verifier.url.startswith("https://") and tls_verifier.cert is not None
    cert, key = Path(tls_verifier.cert), tls_verifier.state / "tls" / "self-signed.key"
    assert cert.parent == tls_verifier.state / "tls"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(cert.stat().st_mode) == 0o600
    assert fingerprint(cert) in tls_verifier.log.read_text()


@needs_external
def test_over_tls_the_token_is_taken_from_another_host(tls_verifier: Server) -> None:
    """The legitimate remote operator: TLS 1.3, the certificate verified against --ca."""
    with VerifierClient(
        _https(tls_verifier, str(EXTERNAL)), token=tls_verifier.token, ca=tls_verifier.cert
    ) as client:
        assert client.state()["active-policy"] == "default"
    info = _tls_handshake(str(EXTERNAL), int(tls_verifier.url.rsplit(":", 1)[1]), tls_verifier)
    assert info == "TLSv1.3"


def _tls_handshake(
    host: str, port: int, server: Server, maximum: ssl.TLSVersion | None = None
) -> str | None:
    context = ssl.create_default_context(cafile=server.cert)
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = maximum
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.version()


def test_tls_older_than_1_3_is_refused(tls_verifier: Server) -> None:
    """A downgrade to TLS 1.2 (by a client, or by anyone on the path) fails the handshake."""
    port = int(tls_verifier.url.rsplit(":", 1)[1])
    with pytest.raises(ssl.SSLError):
        _tls_handshake("127.0.0.1", port, tls_verifier, ssl.TLSVersion.TLSv1_2)
    assert _tls_handshake("127.0.0.1", port, tls_verifier) == "TLSv1.3"


def test_a_client_refuses_a_server_its_ca_does_not_vouch_for(
    tls_verifier: Server, tmp_path: Path
) -> None:
    """An impostor in the middle with a certificate of its own: the client's --ca check
    (chain and host name) refuses it, and nothing (no token) is sent."""
    other = servicetls.make_self_signed(tmp_path / "other", ["localhost", "127.0.0.1"])
    url = _https(tls_verifier, "127.0.0.1")
    with (
        VerifierClient(url, token=tls_verifier.token, ca=other.cert) as client,
        pytest.raises(VerifierUnreachable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.state()
    # The right CA but a name the certificate is not for: refused too.
    with (
        VerifierClient(_https(tls_verifier, "127.0.0.2"), ca=tls_verifier.cert) as client,
        pytest.raises(VerifierUnreachable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.discovery()
    # And through the CLI, --ca (or VERITEE_CA) given once for the whole command.
    ok = tls_verifier.cli(
        tmp_path, "--ca", tls_verifier.cert, "verifier", "provision", "--verifier", url,
        "--token", tls_verifier.token, "show",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()
    bad = tls_verifier.cli(
        tmp_path, "--ca", other.cert, "verifier", "provision", "--verifier", url,
        "--token", tls_verifier.token, "show",
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr.decode(), bad.stderr.decode()
    assert tls_verifier.proc.poll() is None  # a failed handshake does not take it down


# -- the secret service ------------------------------------------------------------------------


def test_the_secret_service_serves_tls_1_3_and_its_key_is_fetched_against_the_ca(
    tmp_path: Path, device: Device
) -> None:
    config = write_config(tmp_path, device, b"\0" * 32)
    state, home = tmp_path / "state", tmp_path / "home"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "veritee", "--home", str(home), "secrets", "serve"),
            *("--config", str(config), "--state", str(state), "--port", "0"),
            "--tls-self-signed",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline().decode().strip() if ready else ""
        assert line.startswith("listening on https://127.0.0.1:"), line
        url = line.removeprefix("listening on ")
        cert = state / "tls" / "self-signed.pem"
        assert stat.S_IMODE((state / "tls" / "self-signed.key").stat().st_mode) == 0o600
        verify = client_verify(cert)
        key = httpx.get(f"{url}/secrets/v1/key", verify=verify, timeout=30)
        assert key.status_code == 200 and key.json()["alg"] == "ES256"
        challenge = httpx.post(f"{url}/secrets/v1/challenge", verify=verify, timeout=30)
        assert challenge.status_code == 201, challenge.text
        port = int(url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=cert)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port)) as raw:
            context.wrap_socket(raw, server_hostname="127.0.0.1")
        run = [sys.executable, "-m", "veritee", "--home", str(home)]
        ok = subprocess.run(
            [*run, "--ca", str(cert), "secrets", "key", "--url", url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert ok.returncode == 0 and ok.stdout.decode().strip() == key.json()["public_key"], ok
        unpinned = subprocess.run(
            [*run, "secrets", "key", "--url", url], capture_output=True, timeout=60, check=False
        )
        err = unpinned.stderr.decode()
        assert unpinned.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in err, err
        assert "Traceback" not in err
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)


# -- the node agent: its owners' API over TLS, from a deployer that trusts one CA ---------------

NODE = "n1"


def _issue(root: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA (as an operator's own) and a certificate it issued for ``names``: (ca, cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator CA")])
    ca = (
        x509.CertificateBuilder(
            ca_name, ca_name, ca_key.public_key(), 1, now, now + dt.timedelta(1)
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    leaf = (
        x509.CertificateBuilder(
            ca_name,  # the issuer comes first
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
            key.public_key(),
            2,
            now,
            now + dt.timedelta(1),
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca.public_bytes(pem))
    (root / "node.pem").write_bytes(leaf.public_bytes(pem))
    (root / "node.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return root / "ca.pem", root / "node.pem", root / "node.key"


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, wasm: Any) -> Iterator[Any]:
    """The vault app deployed over TLS: the agent serves the operator CA's certificate, and
    the deployer (every CLI command below) trusts that CA once, through VERITEE_CA."""
    from veritee.app.cluster import LocalCluster

    from .test_app_deploy import deploy_locally
    from .test_attack_app import APP, SECRET

    workdir = tmp_path_factory.mktemp("tls-node")
    ca, cert, key = _issue(workdir, ["127.0.0.1", "localhost"])
    saved = os.environ.get(servicetls.CA_ENV)
    os.environ[servicetls.CA_ENV] = str(ca)
    cluster = LocalCluster(workdir / "cluster", names=(NODE,), verifier=False, tls=(cert, key))
    cluster.start()
    try:
        home = deploy_locally(
            cluster,
            workdir,
            APP,
            {
                "vault": (NODE, wasm("tests/assets/c/app_vault.c")),
                "sender": (NODE, wasm("tests/assets/c/app_sender.c")),
            },
            [
                {"name": "reveal", "direct": True, "to_module": "vault", "to_handler": "reveal"},
            ],
        )
        home.ok("call", "vault", "store", SECRET.decode())
        yield home, cluster.nodes[NODE].url, ca
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop(servicetls.CA_ENV, None)
        else:
            os.environ[servicetls.CA_ENV] = saved


def _send(url: str, method: str, path: str, body: Any, signer: Any = None, app: str = "") -> Any:
    import cbor2

    from veritee.app import auth

    from .test_attack_app import APP

    content = bytes(cbor2.dumps(body)) if body is not None else b""
    headers = {"content-type": "application/cbor"}
    verify = client_verify()
    if signer is not None:
        node = NODE
        if method == "PUT" and path.count("/") == 3:  # configure: signed for the agent's id
            node = cbor2.loads(httpx.get(f"{url}/v1/info", verify=verify, timeout=60).content)["id"]
        headers[auth.HEADER] = auth.sign(
            signer, app=app or APP, node=node, method=method, path=path, body=content
        )
    return httpx.request(
        method, url + path, content=content, headers=headers, timeout=60, verify=verify
    )


def test_over_tls_every_route_refuses_strangers_and_other_apps_owners(tls_node: Any) -> None:
    """Across machines, over TLS: on every route about the app, unsigned 401, another
    app's owner 403 (also when it signs as its own app); the owner's CLI, which trusts the
    CA once, still reveals its secret; and the API is not there in plain HTTP at all."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from .test_attack_app import APP, ROUTES, SECRET

    home, url, _ = tls_node
    assert url.startswith("https://127.0.0.1:")
    other = ec.generate_private_key(ec.SECP256R1())
    created = _send(url, "PUT", "/v1/apps/other-app", {"node": NODE, "peers": {}}, other,
                    app="other-app")  # fmt: skip
    assert created.status_code == 200, created.text  # a new app is anyone's own
    for method, path, body in ROUTES:
        p = path.format(app=APP)
        assert _send(url, method, p, body).status_code == 401, p
        assert _send(url, method, p, body, other).status_code == 403, p
        mixed = _send(url, method, p, body, other, app="other-app")
        assert mixed.status_code == 401, (p, mixed.text)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/v1/info", timeout=10)
    assert home.ok("request", "reveal").strip() == SECRET.decode()


def test_a_deployer_without_the_ca_refuses_the_node(tls_node: Any) -> None:
    """A node's certificate the deployer's CA does not vouch for (an impostor's, or this
    one's without --ca): refused at the handshake, with one line, before anything is sent."""
    from .test_attack_app import SECRET

    home, _, ca = tls_node
    env_ca = os.environ.pop(servicetls.CA_ENV)
    try:
        refused = home.cli("request", "reveal")
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        assert "Traceback" not in refused.stderr and SECRET.decode() not in refused.stdout
        pinned = home.cli("--ca", ca, "request", "reveal")
        assert pinned.returncode == 0 and pinned.stdout.strip() == SECRET.decode(), pinned.stderr
    finally:
        os.environ[servicetls.CA_ENV] = env_ca


# -- bad TLS options: one line at start, never a traceback ---------------------------------------


@pytest.mark.parametrize("command", ["verifier serve", "secrets serve", "node start"])
def test_bad_tls_options_are_one_line_at_start(tmp_path: Path, command: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    other = servicetls.make_self_signed(tmp_path / "other", ["localhost"])
    extra = ["--config", str(tmp_path / "none.yaml")] if command == "secrets serve" else []
    for args, says in (
        (["--tls-cert", str(cert)], "go together"),
        (["--tls-self-signed", "--tls-cert", str(cert), "--tls-key", str(key)], "drop"),
        (["--tls-cert", str(cert), "--tls-key", str(key)], "cannot use certificate"),
        (["--tls-cert", str(other.cert), "--tls-key", str(key)], "cannot use certificate"),
        (["--tls-client-ca", str(other.cert)], "needs TLS"),
    ):
        if command == "secrets serve":
            (tmp_path / "none.yaml").write_text("secrets: []\n")
        proc = subprocess.run(
            [sys.executable, "-m", "veritee", "--home", str(tmp_path / "home"),
             *command.split(), "--port", "0", *extra, *args],
            capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        err = proc.stderr.decode()
        assert proc.returncode == 2, (args, proc.returncode, err)
        assert says in err and "Traceback" not in err, (args, err)


def test_the_server_context_is_tls_1_3_and_a_client_ca_requires_client_certificates(
    tmp_path: Path,
) -> None:
    tls = servicetls.make_self_signed(tmp_path / "tls", ["localhost"])
    first = fingerprint(tls.cert)
    context = tls.context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_NONE
    mutual = servicetls.ServerTls(tls.cert, tls.key, client_ca=tls.cert).context()
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    # Kept across restarts (a pinned fingerprint stays valid), made anew for other names.
    again = servicetls.make_self_signed(tmp_path / "tls", ["localhost"])
    assert fingerprint(again.cert) == first
    other = servicetls.make_self_signed(tmp_path / "tls", ["localhost", "node.example"])
    assert fingerprint(other.cert) != first
