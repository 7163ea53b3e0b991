"""Several verifier workers on one throwaway PostgreSQL cluster: they serve and share state.

Marked ``postgres``: it needs Debian's PostgreSQL server binaries, root (the cluster runs as
the ``postgres`` OS user) and psycopg. Run it with ``pytest -m postgres``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from veritee.evidence.claims import MEDIA_TYPE
from veritee.verifier import ear
from veritee.verifier.client import nonce_of
from veritee.verifier.store import Store

from .conftest import Device
from .test_verifier_service import Attester, _metric, start_verifier
from .test_verifier_store import SESSION_CHECKS

pytestmark = pytest.mark.postgres

PG_TIMEOUT = 60  # seconds for initdb / start / stop; a bound that only catches a hang


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary directory, as a SQLAlchemy URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    if os.geteuid() != 0:
        pytest.skip("starting a throwaway cluster as the postgres user needs root")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres OS user")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="veritee-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    os.chown(sock, user.pw_uid, user.pw_gid)
    port = 54329

    def as_postgres(*args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=PG_TIMEOUT,
        )

    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        as_postgres(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-o",
            f"-k {sock} -c listen_addresses='' -p {port}",
            "-w",
            "start",
        )
        subprocess.run(
            [
                "psql",
                "-h",
                str(sock),
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE veritee",
            ],
            check=True,
            capture_output=True,
            timeout=PG_TIMEOUT,
        )
        yield f"postgresql+psycopg://postgres@/veritee?host={sock}&port={port}"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=PG_TIMEOUT,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def attester(device: Device, wasm: Callable[..., Path]) -> Iterator[Attester]:
    from veritee.tee.ta import WasmSession

    module = wasm("examples/hello/hello.c").read_bytes()
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(module, name="hello")
        yield Attester(session, module)


def test_workers_on_postgres_serve_and_share_state(
    device: Device,
    attester: Attester,
    wasm: Callable[..., Path],
    postgres_url: str,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    # Two workers behind one port, and a second service process on another port: three
    # processes, one database, one state directory (so one signing key).
    a = start_verifier(device.home, state, "--database", postgres_url, "--workers", "2")
    b = start_verifier(device.home, state, "--database", postgres_url)
    try:
        a.provision(device.home, "trust-device")
        a.provision(device.home, "module", wasm("examples/hello/hello.c"), "--name", "hello")
        pids = set()
        for _ in range(300):
            pids.add(httpx.get(f"{a.url}/health").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers answer behind the one port"

        # A session opened on one process is completed on the other, with the endorsements
        # provisioned through the first: the state lives in PostgreSQL.
        with a.client() as ca, b.client() as cb:
            assert ca.discovery()["ear-verification-key"] == cb.discovery()["ear-verification-key"]
            url, session = ca.new_session()
            moved = b.url + url[len(a.url) :]
            done = cb.submit(moved, attester.evidence(nonce_of(session)), MEDIA_TYPE)
            result = ear.verify(done["result"], ca.public_key())
            assert result.submods["module"].status == "warning"
            assert ca.session(url)["status"] == "complete"
            # Replay through the other process is refused too: one submission per nonce.
            again = httpx.post(url, content=b"\xa0", headers={"Content-Type": MEDIA_TYPE})
            assert again.json()["check"] == "SessionAlreadyUsed"

        # A revocation through one process takes effect in every worker of the other.
        ueid = result.submods["platform"].extensions["ear.veraison.annotated-evidence"]["ueid"]
        b.provision(device.home, "revoke", "--device", ueid)
        for _ in range(6):
            with a.client() as client:
                token = client.attest(attester.builder)
                revoked = ear.verify(token, client.public_key())
            assert revoked.extensions["ear.veritee.failure"]["check"] == "DeviceRevoked"
        metrics = httpx.get(f"{a.url}/metrics").text
        assert _metric(metrics, "veritee_appraisals_total", outcome="contraindicated") == 6
    finally:
        a.stop()
        b.stop()
    # Restart on the same database: nothing was lost.
    c = start_verifier(device.home, state, "--database", postgres_url)
    try:
        with c.client(token=True) as client:
            assert client.state()["revocations"][0]["value"] == ueid
            assert len(client.sessions(100)) == 7  # the shared one and six revoked
    finally:
        c.stop()


def test_sessions_keep_their_promises_on_postgres(postgres_url: str) -> None:
    Store(postgres_url).create()
    for check in SESSION_CHECKS:
        check(postgres_url)
