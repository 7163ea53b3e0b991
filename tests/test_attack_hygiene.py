"""Issue 18, attacks 9 and 11: evidence that says what it is, and a verifier that stores,
parses and deletes only what it should.

Each test runs its adversary's attack through the real processes (a ``veritee verifier
serve`` subprocess, a device's running secure world), asserts the specific failed check, and
ends by showing the owner's honest flow still works.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_app_deploy import (
    APP,
    REPO,
    SmartHome,
    build_smart_home,
    deploy_trusting_homes,
    until,
)
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for
from veritee.evidence.claims import HOST_DATA, MAX_HOST_DATA, MEDIA_TYPE, Evidence, ModuleClaims
from veritee.evidence.errors import MalformedToken
from veritee.evidence.readable import describe
from veritee.tee.ta import WasmSession
from veritee.verifier import ear
from veritee.verifier.client import CAPABILITY_HEADER, VerifierClient, nonce_of

from .conftest import Device
from .test_verifier_service import Attester, Server, start_verifier

NEW_SESSION = "/challenge-response/v1/newSession"
# Attack 11b: 300 garbage submissions once grew the database by 18 MB (each body kept a week).
# Now malformed evidence keeps a row with its signed contraindicated result (as Veraison answers
# it, about 1.5 KB whatever the body) and never the body: 4 KiB each bounds the row and its
# index entries, a fifteenth of the 60 KiB each garbage body would have kept.
GARBAGE_SUBMISSIONS = 300
MAX_BYTES_PER_REFUSED_SUBMISSION = 4096
GARBAGE_BODY_BYTES = 60 * 1024  # just under the verifier's 64 KiB evidence limit


@pytest.fixture(scope="module")
def hello(wasm: Callable[..., Path]) -> Path:
    return wasm("examples/hello/hello.c")


@pytest.fixture(scope="module")
def attester(device: Device, hello: Path) -> Iterator[Attester]:
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(hello.read_bytes(), name="hello")
        yield Attester(session, hello.read_bytes())


@pytest.fixture(scope="module")
def server(
    device: Device, hello: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    s = start_verifier(device.home, tmp_path_factory.mktemp("verifier"))
    try:
        s.provision(device.home, "trust-device")
        s.provision(device.home, "module", hello, "--name", "hello", "--version", "1.0")
        yield s
    finally:
        s.stop()


def _honest_round_trip(server: Server, attester: Attester) -> ear.Ear:
    with server.client() as client:
        token = client.attest(attester.builder)
        result = ear.verify(token, client.public_key())
    assert result.submods["module"].status == "warning"
    assert server.proc.poll() is None
    return result


# -- 11b: refused submissions are not kept with their bodies ----------------------------------


def _database_bytes(state: Path) -> int:
    """The database file's size once the write-ahead log is copied back into it."""
    db = state / "verifier.db"
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(db)


def test_garbage_submissions_do_not_grow_the_database(server: Server, attester: Attester) -> None:
    """Adversary: anyone who can reach the verifier's API, with no credential at all. Attack:
    open sessions and submit 60 KiB of garbage to each, 300 times."""
    before = _database_bytes(server.state)
    garbage = b"\xa1\x67profile" + os.urandom(GARBAGE_BODY_BYTES)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(GARBAGE_SUBMISSIONS):
            created = http.post(NEW_SESSION)
            assert created.status_code == 201
            url = f"/challenge-response/v1/{created.headers['location']}"
            # Malformed evidence is the evidence's fault: a signed result says so (as
            # Veraison's), and the body is not kept.
            answered = http.post(url, content=garbage, headers={"Content-Type": MEDIA_TYPE})
            assert answered.status_code == 200, answered.text
            assert answered.json()["status"] == "complete"
        # The session still says it took its submission and why it failed, without the body.
        failed = http.get(url).json()
        assert "evidence" not in failed
    with server.client() as client:
        result = ear.verify(failed["result"], client.public_key())
    assert result.extensions["ear.veritee.failure"]["check"] == "MalformedToken"
    assert {a.status for a in result.submods.values()} == {"contraindicated"}
    grown = _database_bytes(server.state) - before
    assert grown < GARBAGE_SUBMISSIONS * MAX_BYTES_PER_REFUSED_SUBMISSION, grown
    # An honest submission still keeps its (signed, small) evidence for its relying party.
    with server.client() as client:
        url, session = client.new_session()
        evidence = attester.evidence(nonce_of(session))
        client.submit(url, evidence, MEDIA_TYPE)
        assert client.session(url)["evidence"]["type"] == MEDIA_TYPE
    _honest_round_trip(server, attester)


def test_forged_evidence_is_not_kept_either(server: Server, attester: Attester) -> None:
    """Evidence that parses but is not signed by a trusted device (here: a genuine module
    token padded with a long name claim, re-encoded without its signature being valid) is
    appraised contraindicated; its bytes are not kept."""
    with server.client() as client:
        url, session = client.new_session()
        good = Evidence.decode(attester.evidence(nonce_of(session)))
        forged = Evidence(good.platform, good.vtee, good.module[:-8] + b"\x00" * 8).encode()
        done = client.submit(url, forged, MEDIA_TYPE)
        assert done["status"] == "complete"
        result = ear.verify(done["result"], client.public_key())
        assert result.submods["module"].status == "contraindicated"
        assert "evidence" not in client.session(url)
    _honest_round_trip(server, attester)


# -- 11c: numeric parameters are validated, never a 500 ---------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "nonceSize=" + "9" * 5000,
        "nonceSize=" + "0" * 5000 + "32",
        "nonceSize=-1",
        "nonceSize=1e3",
        "nonceSize=%D9%A3%D9%A2",  # Arabic-Indic digits: str.isdigit() says yes, int() too
        "nonceSize=%C2%B2",  # superscript two: isdigit() yes, int() raises
        "nonceSize=",
        "nonceSize=65",
    ],
    ids=[
        "5000-digits",
        "zero-padded",
        "negative",
        "exponent",
        "arabic",
        "superscript",
        "empty",
        "65",
    ],
)
def test_bad_nonce_size_is_a_clear_400(server: Server, attester: Attester, query: str) -> None:
    """Adversary: any client. Attack: a nonceSize of 5,000 digits (it was a 500)."""
    response = httpx.post(f"{server.url}{NEW_SESSION}?{query}", timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["check"] == "BadNonceRequest"
    assert "nonceSize must be a decimal number in range 8..64" in response.json()["detail"]
    _honest_round_trip(server, attester)


@pytest.mark.parametrize("limit", ["9" * 5000, "-5", "²", "0", "1001", ""])
def test_bad_sessions_limit_is_a_clear_400(server: Server, attester: Attester, limit: str) -> None:
    """Sibling: the operator's ``GET /provisioning/v1/sessions?limit=`` (it was a 500 too)."""
    response = httpx.get(
        f"{server.url}/provisioning/v1/sessions",
        params={"limit": limit},
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["check"] == "BadQueryParameter"
    with server.client(token=True) as client:
        assert isinstance(client.sessions(limit=5), list)
    _honest_round_trip(server, attester)


def test_a_content_length_of_thousands_of_digits_is_no_500(
    server: Server, attester: Attester
) -> None:
    """Sibling: the body's declared length is a number from the client too."""
    with server.client() as client:
        url, _ = client.new_session()
    with httpx.Client(timeout=30) as http:
        request = http.build_request(
            "POST", url, content=b"\xa0", headers={"Content-Type": MEDIA_TYPE}
        )
        request.headers["Content-Length"] = "9" * 5000
        try:
            response = http.send(request)
        except httpx.HTTPError:
            response = None  # the HTTP server itself hung up on it: no worker was hurt
    assert response is None or response.status_code in (400, 413), response.text
    _honest_round_trip(server, attester)


# -- 11d: only a session's creator deletes it -------------------------------------------------


def test_a_stranger_cannot_delete_a_session_it_saw(server: Server, attester: Attester) -> None:
    """Adversary: anyone who saw a session's id (a relying party it was shown to, a log, a
    proxy). Attack: DELETE it, so the attester's submission is refused and its result lost."""
    with server.client() as creator:
        url, session = creator.new_session()
        capability = creator.capability(url)
        assert capability
        for header in (None, "", "A" * 22, "A" * 5000, capability[:-1] + "B"):
            headers = {} if header is None else {CAPABILITY_HEADER: header}
            response = httpx.delete(url, headers=headers, timeout=30)
            assert response.status_code == 403, (header, response.text)
            assert response.json()["check"] == "NotSessionCreator"
        # The session still works for its creator: evidence in, a result out, readable.
        done = creator.submit(url, attester.evidence(nonce_of(session)), MEDIA_TYPE)
        assert done["status"] == "complete"
        assert creator.session(url)["result"] == done["result"]
        # After the submission too, a stranger deletes nothing.
        assert httpx.delete(url, timeout=30).status_code == 403
        assert creator.session(url)["result"] == done["result"]
        # Another session's capability is not this one's.
        other_url, _ = creator.new_session()
        other = creator.capability(other_url)
        assert other and other != capability
        with VerifierClient(server.url) as stranger:
            response = httpx.delete(url, headers={CAPABILITY_HEADER: other}, timeout=30)
            assert response.status_code == 403
            stranger.delete(url, capability=capability)  # the creator's capability deletes it
        response = httpx.get(url, timeout=30)
        assert response.status_code == 404
    _honest_round_trip(server, attester)


# -- 9: evidence and appraisal say which rollback protection a device has ---------------------

REQUIRE_ROLLBACK = """\
package veritee
import rego.v1
# Events must never be accepted twice: only counters the host cannot roll back will do.
require_rollback_protection := true
"""


def test_a_policy_requiring_hardware_rollback_protection_refuses_the_emulated_device(
    server: Server, attester: Attester
) -> None:
    """The emulated RPMB is a file of the device's user (attack 9): its evidence says so
    (``host-file``), the default policy accepts it with that annotation, and a policy with
    ``require_rollback_protection`` refuses it."""
    default = _honest_round_trip(server, attester)
    for name in ("platform", "module"):
        assert default.submods[name].extensions["ear.veritee.rollback-protection"] == "host-file"
    annotated = default.submods["platform"].extensions["ear.veraison.annotated-evidence"]
    assert annotated["rollback-protection"] == "host-file"
    assert default.submods["platform"].trust_vector.storage_opaque == 0  # no claim made
    with server.client(token=True) as admin:
        admin.put_policy("needs-rollback-protection", REQUIRE_ROLLBACK, activate=True)
        try:
            with server.client() as client:
                refused = ear.verify(client.attest(attester.builder), client.public_key())
        finally:
            admin.activate_policy("default")
    for name in ("platform", "module"):
        submod = refused.submods[name]
        assert submod.status == "contraindicated"
        assert submod.trust_vector.storage_opaque == 96
        assert submod.extensions["ear.veritee.rollback-protection"] == "host-file"
        assert any(
            "requires rollback protection in hardware" in r and "'host-file'" in r
            for r in submod.extensions["ear.veritee.reasons"]
        ), submod.extensions
    _honest_round_trip(server, attester)  # the default policy is back, and accepts it


@pytest.mark.emulation_limit
def test_rollback_through_the_emulated_rpmb_replays_an_event_and_the_evidence_says_so(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> None:
    """Adversary: whoever acts as the user that runs a node (its host administrator). Attack:
    snapshot the node's counters file (the emulated RPMB) with the modules' sealed state and
    inbox positions, let an event be accepted, restore all of it across a restart: the event
    is delivered again and accepted again (a press counted twice).

    This is the emulation's limit, asserted as it is: counters in a file of the user are no
    better than the sealed state beside them. What holds is that the device's evidence says
    so (``host-file``), so a policy can refuse such a device (the tests above)."""
    workdir = tmp_path_factory.mktemp("rb")  # short: socket paths have a length limit
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(workdir / "cluster", verifier=False, poll_us=0)
    cluster.start()
    try:
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        sh = deploy_trusting_homes(cluster, descriptor, binaries, workdir)
        sh.ok("output", "trigger-btn", "press")
        until(lambda: _count(sh) == 1)

        dep = state_mod.load(sh.state)
        node = cluster.nodes[dep.module("db").node]
        modules = node.home / "node" / "apps" / APP / "modules"
        kept = [
            *modules.glob("*/state.log"),
            *modules.glob("*/*.head"),
            *(node.home / "device" / "counters").glob("*.ctr"),
        ]
        assert any(p.suffix == ".ctr" for p in kept) and (modules / "db" / "state.log") in kept
        snapshot = {p: p.read_bytes() for p in kept}

        sh.ok("output", "trigger-btn", "press")  # accepted once: the count moves to 2
        until(lambda: _count(sh) == 2)
        cluster.kill_node(node.name, tee=True)
        for path, data in snapshot.items():
            path.write_bytes(data)
        cluster.start_node(node.name)
        # The emulated backend cannot tell: the same press is accepted again.
        until(lambda: _count(sh) == 3)
        db = next(m for m in sh.status()["modules"] if m["name"] == "db")
        assert db["running"], db

        # What the device says about itself: its counters are a file the host can roll back.
        with Device(node.home).context() as ctx:
            session = WasmSession(ctx)
            session.load(wasm("examples/hello/hello.c").read_bytes(), name="probe")
            described = describe(session.attest(os.urandom(32)))
            session.close()
        assert described["platform"]["rollback_protection"] == "host-file"
    finally:
        cluster.stop()


def _count(sh: SmartHome) -> int:
    """The presses db counted, or -1 while its node does not answer (being restarted)."""
    proc = sh.cli("request", "get-presses")
    return int(proc.stdout.strip()) if proc.returncode == 0 else -1


# -- 11a: what the host chooses is host data, never the module's user data --------------------


def test_data_the_host_chooses_is_host_data_only(
    server: Server, attester: Attester, device: Device, hello: Path
) -> None:
    """Adversary: the host of a device (any normal-world caller of the runtime TA). Attack:
    have an endorsed module's evidence carry data of its choosing (say, the digest of a key
    it holds), so a relying party that binds a key through the module's user data takes the
    host's key for the module's."""
    chosen = hashlib.sha256(b"the host's own key").digest()
    with server.client() as client:
        url, session = client.new_session()
        evidence = attester.session.attest(nonce_of(session), chosen)
        done = client.submit(url, evidence, MEDIA_TYPE)
        result = ear.verify(done["result"], client.public_key())
    module = result.submods["module"]
    assert module.status == "warning"  # the evidence is genuine: the module is endorsed
    annotated = module.extensions["ear.veraison.annotated-evidence"]
    assert annotated["host-data"] == chosen.hex()
    assert annotated["user-data"] == ""  # the module supplied none, and the host cannot
    # The CLI's --host-data (old name --user-data) is the same path.
    out = server.state / "host-data.cbor"
    for option in ("--host-data", "--user-data"):
        device.ok("attest", hello, option, chosen.hex(), "-o", out)
        described = describe(out.read_bytes())["module"]
        assert (described["host_data"], described["user_data"]) == (chosen.hex(), "")
    _honest_round_trip(server, attester)


@pytest.mark.parametrize("value", ["text", b"x" * (MAX_HOST_DATA + 1), 7])
def test_a_malformed_host_data_claim_is_refused(value: object) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    from veritee.evidence import cose

    provisioning = cose.x25519_key_to_cose(x25519.X25519PrivateKey.generate().public_key())
    claims = ModuleClaims(bytes(32), bytes(32), bytes(32), "m", provisioning, 0, host_data=b"hi")
    encoded = claims.to_cbor()
    assert ModuleClaims.from_cbor(encoded).host_data == b"hi"
    assert HOST_DATA not in ModuleClaims(**{**claims.__dict__, "host_data": b""}).to_cbor()
    with pytest.raises(MalformedToken, match="host data"):
        ModuleClaims.from_cbor({**encoded, HOST_DATA: value})


def test_the_result_names_the_host_directories_a_module_was_granted(
    server: Server, device: Device, hello: Path, tmp_path: Path
) -> None:
    """A relying party reads from the EAR which host directories the module may reach, so a
    module granted more than its owner meant is not mistaken for the plain one."""
    granted = tmp_path / "granted"
    granted.mkdir()
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(hello.read_bytes(), name="hello", dirs=[(str(granted), "/w", True)])
        with server.client() as client:
            url, challenge = client.new_session()
            evidence = session.attest(nonce_of(challenge))
            result = ear.verify(
                client.submit(url, evidence, MEDIA_TYPE)["result"], client.public_key()
            )
        session.close()
    annotated = result.submods["module"].extensions["ear.veraison.annotated-evidence"]
    assert [dict(g) for g in annotated["grants"]] == [
        {"host": os.path.realpath(granted), "guest": "/w", "writable": True}
    ]
    # Granted or not, the configuration differs, so the two are told apart.
    with device.context() as ctx:
        plain = WasmSession(ctx)
        plain.load(hello.read_bytes(), name="hello")
        with server.client() as client:
            token = client.attest(Attester(plain, hello.read_bytes()).builder)
            unplain = ear.verify(token, client.public_key()).submods["module"]
        plain.close()
    plain_annotated = unplain.extensions["ear.veraison.annotated-evidence"]
    assert list(plain_annotated["grants"]) == []
    assert plain_annotated["config"] != annotated["config"]
