"""Transport security on the services: TLS 1.3 from files or self-signed, and the tokens and
owners' requests that must not cross a network in clear or reach another app.

Real processes: ``veritee verifier serve``, ``veritee secrets serve`` and ``veritee node start``
on this machine. A non-loopback peer is this machine's own non-loopback address (a packet to
it does not take the loopback interface's word for where it came from).
"""

from __future__ import annotations

import socket

import httpx
import pytest

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
