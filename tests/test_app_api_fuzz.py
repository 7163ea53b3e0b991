"""The node agent's HTTP API under arbitrary input: every body, of any shape, to every route
gets a 4xx answer that says what is wrong, and the agent serves on. It is the deployer's and
the users' way in, and anyone who can reach its port may write to it.

One node agent with its own device and secure world, a small app deployed on it so that the
module routes reach a real module (what the draws do to it, they may do: the test only asks
that nothing breaks the agent). Draws are signed by the app's owner (so that their bodies
reach the parsing), by a stranger with a key of its own (403 on the app, or its own new
app), or not at all (401 before anything is parsed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.test_app_deploy import deploy_locally
from veritee.app import auth
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster

NODE = "solo"
APP = "fuzz"
# Routes that change something take PUT or POST; {app} and {name} are drawn.
ROUTES = [
    ("PUT", "/v1/apps/{app}"),
    ("PUT", "/v1/apps/{app}/modules/{name}"),
    ("POST", "/v1/apps/{app}/modules/{name}/attest"),
    ("POST", "/v1/apps/{app}/modules/{name}/connect"),
    ("POST", "/v1/apps/{app}/modules/{name}/activate"),
    ("POST", "/v1/apps/{app}/modules/{name}/discard"),
    ("POST", "/v1/apps/{app}/modules/{name}/disable"),
    ("POST", "/v1/apps/{app}/retire"),
    ("PUT", "/v1/apps/{app}/periodic"),
    ("POST", "/v1/apps/{app}/modules/{name}/inject"),
    ("POST", "/v1/events"),
    ("POST", "/v1/request"),
]
FIELDS = [
    "node", "peers", "deployment_key", "memory_mb", "timeout", "wasm", "succession", "nonce",
    "user_data", "route", "statement", "retire", "events", "event", "wait",
]  # fmt: skip

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.binary(max_size=48)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = (
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6).map(cbor2.dumps)
    | values.map(cbor2.dumps)
    | st.binary(max_size=64)
)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[tuple[str, ec.EllipticCurvePrivateKey]]:
    workdir = tmp_path_factory.mktemp("api-fuzz")
    cluster = LocalCluster(workdir / "cluster", names=(NODE,), verifier=False)
    cluster.start()
    try:
        counter = wasm("tests/assets/c/app_counter.c")
        direct = {"name": "count", "direct": True, "to_module": "counter", "to_handler": "count"}
        home = deploy_locally(cluster, workdir, APP, {"counter": (NODE, counter)}, [direct])
        yield cluster.nodes[NODE].url, state_mod.load_keys(home.state).deployment
    finally:
        cluster.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.sampled_from(ROUTES),
    app=st.sampled_from([APP, "other-app"]),
    name=st.sampled_from(["counter", "nobody"]),
    staged=st.sampled_from(["", "?staged=true", "?staged=yes", "?staged=maybe"]),
    body=bodies,
    signer=st.sampled_from(["owner", "stranger", "nobody"]),
)
# Found by drawing: disabling a module of an app the node does not have was a 500.
@example(
    route=("POST", "/v1/apps/{app}/modules/{name}/disable"),
    app="other-app",
    name="counter",
    staged="",
    body=cbor2.dumps({"retire": [b"\x01" * 16]}),
    signer="owner",
)
def test_any_body_to_any_route_is_a_client_error_never_a_crash(
    node: tuple[str, ec.EllipticCurvePrivateKey],
    route: tuple[str, str],
    app: str,
    name: str,
    staged: str,
    body: bytes,
    signer: str,
) -> None:
    base, owner = node
    method, path = route
    target = path.format(app=app, name=name) + staged
    url = base + target
    headers = {}
    if signer != "nobody":
        key = owner if signer == "owner" else STRANGER
        signed_app = app if "{app}" in path else APP
        headers[auth.HEADER] = auth.sign(
            key, app=signed_app, node=NODE, method=method, path=target, body=body
        )
    response = CLIENT.request(method, url, content=body, headers=headers)
    assert response.status_code < 500, (method, url, body, response.text)
    if staged not in ("", "?staged=true"):
        pass  # a query FastAPI cannot parse is refused before any handler (400): no change
    elif signer == "nobody":
        assert response.status_code == 401, (method, url, response.text)
    elif signer == "stranger" and (app == APP or "{app}" not in path):
        assert response.status_code == 403, (method, url, response.text)
    if response.status_code >= 400 and response.status_code != 405:  # 405: the route's method
        assert response.headers.get("content-type") == "application/cbor", response.text
        problem: Any = cbor2.loads(response.content)
        assert isinstance(problem.get("error"), str) and problem["error"]
    assert CLIENT.get(f"{base}/v1/info").status_code == 200


# A new connection for each request (after a 500 the server drops the connection it answered
# on, which would fail the next request, not the one at fault), one client for them all.
STRANGER = ec.generate_private_key(ec.SECP256R1())
CLIENT = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
