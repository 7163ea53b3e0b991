"""``veritee dashboard`` in a real headless browser: Debian's chromium, driven by Selenium.

The smart-home app is deployed on two real node agents and a verifier; the dashboard runs as
its own process; the page is opened in chromium and must show the deployment, then the drop
a replayed event causes. A hostile node agent (a real HTTP server on a real port, answering
as a node agent would, with markup and wrong types in every field it controls) must not
script the page or break the dashboard; a page or process that reaches the port without the
URL's key, or through a rebound host name, reads nothing.

The screenshot is kept under $VERITEE_ARTIFACTS (else the test's tmp dir); its path is printed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import cbor2
import httpx
import pytest

from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for

from .test_app_deploy import REPO, SmartHome, build_smart_home

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_TIMEOUT = 30.0  # seconds for the page to show a change; a poll is every second
START_TIMEOUT = 30.0


@dataclass
class Running:
    url: str
    process: subprocess.Popen[str]

    @property
    def base(self) -> str:
        return self.url.split("#", 1)[0].rstrip("/")

    @property
    def key(self) -> str:
        return self.url.split("#key=", 1)[1]


@contextlib.contextmanager
def _dashboard(state: Path, *args: str, home: Path | None = None) -> Iterator[Running]:
    env = {**os.environ, **({"VERITEE_HOME": str(home)} if home else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "veritee", "dashboard", "--state", str(state), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the URL, once it listens
        assert line.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), (
            proc.stderr.read() if proc.stderr else ""
        )
        yield Running(line, proc)
        assert proc.poll() is None, "the dashboard exited while in use"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err  # whatever it was sent, never one


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "the dashboard's test needs Debian's chromium and chromium-driver: scripts/setup.sh --test"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where chromium's sandbox will not start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(START_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _until(check: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # an element not rendered yet, or re-rendered under us
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what} (last: {last!r})")


def _cell(driver: Any, table: str, name: str, field: str) -> str:
    """A cell's text; the page re-renders its tables at every poll, so a row found may be
    replaced before it is read: then read the new one."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr"):
                if row.get_attribute("data-name") == name:
                    return str(row.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text)
            return ""
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"the {table} table kept changing under the test")


def _artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("VERITEE_ARTIFACTS")
    out = Path(root) if root else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- the deployment, live ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("dashboard")
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(workdir / "cluster")
    cluster.start()
    try:
        cluster.endorse((m, p.read_bytes()) for m, p in binaries.items())
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        sh = SmartHome(cluster, workdir / "deployment.json", binaries, workdir)
        proc = sh.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        sh.ok("output", "init-server", "start")
        yield sh
    finally:
        cluster.stop()


def test_the_page_shows_the_deployment_and_the_drop_a_replay_causes(
    home: SmartHome, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    token = home.cluster.workdir / "verifier" / "admin-token"
    with _dashboard(home.state, "--verifier-token-file", str(token)) as dash:
        browser.get(dash.url)
        dep = state_mod.load(home.state)
        assert browser.title == "Veritee dashboard"
        _until(lambda: browser.find_element(By.ID, "app").text == dep.app, "the app's name")
        for name, m in dep.modules.items():
            _until(lambda n=name: _cell(browser, "modules", n, "status") == "connected", name)
            shown = _cell(browser, "modules", name, "measurement")
            assert shown and m.measurement.startswith(shown.rstrip("…")), shown
            assert _cell(browser, "modules", name, "attestation").startswith("warning")
        for name in dep.nodes:
            assert _cell(browser, "nodes", name, "up") == "up"
        # The EAR's trust vector, as the verifier signed it: the emulated TEE's hardware
        # claim is what makes it a warning.
        modules = browser.find_element(By.ID, "modules").text
        assert "platform: warning" in modules and "hardware" in modules, modules
        assert "executables 2 (affirming)" in modules, modules
        summary = browser.find_element(By.ID, "summary").text
        assert "5/5 modules connected" in summary and "2/2 node agents up" in summary
        assert "no deployment key" not in summary
        # The verifier's appraisals: the deploy's, and the sessions its token lists.
        appraisals = browser.find_element(By.ID, "appraisals").text
        for name, m in dep.modules.items():
            assert m.attestation["appraisal"] in appraisals, name
        assert len(browser.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")) >= 5

        # Events: a press goes in and out on the button's connections.
        button = "button_driver.button_pressed->controller.button_pressed"
        home.ok("output", "trigger-btn", "press")
        _until(lambda: _cell(browser, "connections", button, "events") != "0 / 0", "events")

        # The attack: the user's own sealed event, replayed to the hub's agent. Its secure
        # world drops it; the page must say so within a poll or two.
        def replays() -> int:
            text = _cell(browser, "connections", "trigger-btn", "dropped")
            for part in text.split(", "):
                reason, _, n = part.partition(" ")
                if reason == "replay":
                    return int(n)
            return 0

        before = replays()
        polls = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls"))
        dep, tool = home.tool()
        event = tool.seal(dep.connection("trigger-btn"), b"press")
        state_mod.save(home.state, dep)
        with home.node("home-hub") as hub:
            assert hub.submit(event, wait=True).get("dropped") is None
            assert hub.submit(event, wait=True)["dropped"] == "replay"
        started = time.monotonic()
        _until(lambda: replays() == before + 1, "the replayed event's drop")
        shown_after = time.monotonic() - started
        assert "replay" in _cell(browser, "modules", "button_driver", "dropped")

        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1500, int(height) + 120)  # the whole page in the picture
        shot = _artifacts(tmp_path) / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"\ndashboard screenshot: {shot}")
        done = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls"))
        took = f"{shown_after:.2f} s, {done - polls} polls"
        print(f"the drop was on the page {took} after the replay")


def test_a_node_agent_that_stops_is_shown_down_and_the_rest_still_is(
    home: SmartHome, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    with _dashboard(home.state) as dash:
        browser.get(dash.url)
        _until(lambda: _cell(browser, "nodes", "home-server", "up") == "up", "the node up")
        home.cluster.stop_node("home-server")  # the last test of this deployment
        _until(lambda: _cell(browser, "nodes", "home-server", "up") == "down", "the node down")
        assert _cell(browser, "nodes", "home-hub", "up") == "up"
        assert "1/2 node agents up" in browser.find_element(By.ID, "summary").text
        assert _cell(browser, "modules", "button_driver", "status") == "connected"


# -- a hostile node agent ---------------------------------------------------------------------

# Markup in every string a node agent chooses; any of it run would set window.__pwned.
MARKUP = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
HOSTILE_APP = "hostile-app"


def _hostile_status() -> dict[str, Any]:
    """A node agent's /v1/apps/APP/status, every field it controls carrying markup."""
    return {
        "address": ["127.0.0.1", 1],
        "counters": {MARKUP: 7},
        "links": {MARKUP: {"queued": 3, "up": MARKUP}},
        "apps": {
            HOSTILE_APP: {
                "modules": {
                    "counter": {
                        "tee": {
                            "running": True,
                            "dropped": {MARKUP: 5},
                            "connections": [{"conn": bytes(16), "dropped": {MARKUP: 2}}],
                        },
                        "delivered": MARKUP,
                        "failed": MARKUP,
                        "inbox": {"x": MARKUP},
                        "log": [MARKUP] * 3,
                    }
                }
            }
        },
    }


# Wrong types where maps, lists and numbers belong: a careless reader would crash on these.
MALFORMED = {
    "counters": [MARKUP],
    "links": {"a": MARKUP},
    "apps": {HOSTILE_APP: {"modules": {"counter": {"tee": [1, 2], "log": MARKUP}}}},
}


class _HostileAgent(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Any]] = {}  # path -> CBOR value, or (media type, bytes)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        answer = self.answers.get(self.path.partition("?")[0], {"error": MARKUP})
        if callable(answer):
            with contextlib.suppress(OSError):  # until the dashboard hangs up
                answer(self)
            return
        media_type, body = (
            answer if isinstance(answer, tuple) else ("application/cbor", cbor2.dumps(answer))
        )
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve_hostile(answers: dict[str, Any]) -> ThreadingHTTPServer:
    handler = type("Agent", (_HostileAgent,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Path]:
    """A deployment whose two nodes are hostile agents (one with markup everywhere, one with
    wrong types), and whose state file names its module and connection with markup too (a
    descriptor from someone else)."""
    metrics = (
        f'veritee_node_events_total{{conn="{MARKUP}",direction="in"}} 1\n'
        f'veritee_node_events_total{{conn="{"00" * 16}",direction="{MARKUP}"}} 4\n'
    ).encode()
    evil = _serve_hostile(
        {
            f"/v1/apps/{HOSTILE_APP}/status": _hostile_status(),
            "/v1/status": _hostile_status(),  # as asked without the app's key (none here)
            "/health": ("text/html", f"<html>{MARKUP}</html>".encode()),
            "/metrics": ("text/plain", metrics),
        }
    )
    broken = _serve_hostile(
        {
            f"/v1/apps/{HOSTILE_APP}/status": MALFORMED,
            "/v1/status": MALFORMED,
            "/metrics": ("text/plain", b"{{{"),
        }
    )
    dep = state_mod.Deployment(app=HOSTILE_APP, descriptor="hostile.json")
    for name, server in (("evil", evil), ("broken", broken)):
        dep.nodes[name] = state_mod.NodeState(name, "127.0.0.1", server.server_address[1])
    dep.modules["counter"] = state_mod.ModuleState(
        "counter", "evil", "counter.wasm", status="connected", reason=MARKUP
    )
    dep.modules[MARKUP] = state_mod.ModuleState(MARKUP, "broken", "x.wasm", status=MARKUP)
    dep.connections[MARKUP] = state_mod.ConnectionState(
        MARKUP, "00" * 16, "counter", "input", MARKUP, status="connected"
    )
    state = tmp_path / "hostile-state.json"
    state_mod.save(state, dep)
    try:
        yield state
    finally:
        evil.shutdown()
        broken.shutdown()


def test_a_hostile_node_agent_cannot_script_the_page_or_break_the_dashboard(
    hostile: Path, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    with _dashboard(hostile) as dash:
        browser.get(dash.url)
        _until(lambda: browser.find_element(By.ID, "app").text == HOSTILE_APP, "the app")
        _until(lambda: browser.find_element(By.ID, "modules").text.count("\n") >= 2, "rows")
        _until(lambda: int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls"))
               >= 3, "three polls")  # fmt: skip
        # None of the markup ran, on any render...
        assert browser.execute_script("return window.__pwned === undefined") is True
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
        # ...and each hostile string is on the page as the text it is.
        body = browser.find_element(By.TAG_NAME, "body").text
        assert body.count(MARKUP) >= 5, body
        assert _cell(browser, "modules", "counter", "dropped") == f"{MARKUP} 5"
        assert _cell(browser, "nodes", "evil", "agent-drops") == f"{MARKUP} 7"
        assert _cell(browser, "connections", MARKUP, "dropped") == f"{MARKUP} 2"
        assert _cell(browser, "modules", MARKUP, "status") == MARKUP
        # This state file has no keys file beside it: the page says what that hides.
        assert "no deployment key" in browser.find_element(By.ID, "summary").text
        # The agent with wrong types is shown as up with nothing to show; the page lives on.
        assert _cell(browser, "nodes", "broken", "up") == "up"
        assert browser.find_element(By.ID, "problem").text == ""
        assert dash.process.poll() is None
        shot = _artifacts(tmp_path) / "dashboard-hostile-node.png"
        browser.save_screenshot(str(shot))
        print(f"\nthe page a hostile node agent answered for: {shot}")


def _flood(agent: BaseHTTPRequestHandler) -> None:
    """A status answer that never ends, as fast as the socket takes it."""
    agent.send_response(200)
    agent.send_header("Content-Type", "application/cbor")
    agent.end_headers()
    chunk = b"\x00" * (1024 * 1024)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        agent.wfile.write(chunk)


def _trickle(agent: BaseHTTPRequestHandler) -> None:
    """A status answer of one byte every half second, so each read is in time."""
    agent.send_response(200)
    agent.send_header("Content-Type", "application/cbor")
    agent.end_headers()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        agent.wfile.write(b"\xa0")
        agent.wfile.flush()
        time.sleep(0.5)


def test_a_node_agent_that_floods_or_trickles_its_answer_stalls_nothing(tmp_path: Path) -> None:
    status_paths = (f"/v1/apps/{HOSTILE_APP}/status", "/v1/status", "/health", "/metrics")
    servers = {
        "flood": _serve_hostile(dict.fromkeys(status_paths, _flood)),
        "trickle": _serve_hostile(dict.fromkeys(status_paths, _trickle)),
        "fine": _serve_hostile({"/v1/status": _hostile_status()}),
    }
    dep = state_mod.Deployment(app=HOSTILE_APP, descriptor="hostile.json")
    for name, server in servers.items():
        dep.nodes[name] = state_mod.NodeState(name, "127.0.0.1", server.server_address[1])
    dep.modules["counter"] = state_mod.ModuleState("counter", "fine", "c.wasm", status="connected")
    state = tmp_path / "state.json"
    state_mod.save(state, dep)
    try:
        with _dashboard(state) as dash:
            started = time.monotonic()
            view = httpx.get(
                f"{dash.base}/api/view",
                headers={"Authorization": f"Bearer {dash.key}"},
                timeout=60,
            ).json()
            took = time.monotonic() - started
            nodes = {n["name"]: n for n in view["nodes"]}
            # Each is cut off, by size or by time, well within a poll's bound.
            assert took < 20, took
            assert not nodes["flood"]["up"] and "bytes" in nodes["flood"]["error"]
            assert not nodes["trickle"]["up"] and "to answer" in nodes["trickle"]["error"]
            assert not nodes["flood"]["health"]["ok"] and not nodes["trickle"]["health"]["ok"]
            assert nodes["fine"]["up"]
            assert view["modules"][0]["dropped"] == {MARKUP: 5}
            print(f"\nthe view with a flooding and a trickling node took {took:.1f} s")
    finally:
        for server in servers.values():
            server.shutdown()


# -- who may read it --------------------------------------------------------------------------


def test_the_view_needs_the_urls_key_and_its_own_host_name(hostile: Path) -> None:
    with _dashboard(hostile) as dash:
        view = f"{dash.base}/api/view"
        good = {"Authorization": f"Bearer {dash.key}"}
        assert httpx.get(view, headers=good, timeout=30).json()["app"] == HOSTILE_APP
        # Another local process, or a page of another site in the operator's browser,
        # without the key printed in the URL.
        for headers in ({}, {"Authorization": "Bearer " + "A" * len(dash.key)}):
            refused = httpx.get(view, headers=headers, timeout=30)
            assert refused.status_code == 401 and "key" in refused.json()["error"]
        # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends
        # the key-less request with its own name; with the key too, it is refused by name.
        port = dash.base.rsplit(":", 1)[1]
        rebound = httpx.get(view, headers={**good, "Host": f"evil.example:{port}"}, timeout=30)
        assert rebound.status_code == 403
        page = httpx.get(f"{dash.base}/", timeout=30)
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        # Nothing a request names reaches the filesystem; nothing changes anything.
        for path in ("/../../etc/passwd", "/static/index.html", "/%2e%2e/pyproject.toml"):
            assert httpx.get(f"{dash.base}{path}", timeout=30).status_code == 404
        assert httpx.post(view, headers=good, timeout=30).status_code == 405
        named = {**good, "Host": f"localhost:{port}"}  # the loopback names are its own
        assert httpx.get(view, headers=named, timeout=30).status_code == 200


def test_off_loopback_it_serves_only_https(hostile: Path, tmp_path: Path) -> None:
    import ssl

    # Plain HTTP on a network address would carry the key and the view in clear.
    plain = subprocess.run(
        [sys.executable, "-m", "veritee", "dashboard", "--state", str(hostile), "--host", "::"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "TLS" in plain.stderr and "SSH tunnel" in plain.stderr
    with _dashboard(hostile, "--tls-self-signed", home=tmp_path / "home") as dash:
        assert dash.url.startswith("https://127.0.0.1:")
        cert = tmp_path / "home" / "dashboard" / "tls" / "self-signed.pem"
        pinned = ssl.create_default_context(cafile=str(cert))
        view = httpx.get(
            f"{dash.base}/api/view",
            headers={"Authorization": f"Bearer {dash.key}"},
            verify=pinned,
            timeout=30,
        )
        assert view.status_code == 200 and view.json()["app"] == HOSTILE_APP
        with pytest.raises(httpx.HTTPError):  # plain HTTP to it gets nothing
            httpx.get(dash.base.replace("https://", "http://") + "/health", timeout=10)
        assert httpx.get(f"{dash.base}/health", verify=pinned, timeout=30).is_success
        assert dash.process.poll() is None


def test_without_a_deployment_it_says_so_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "dashboard", "--state", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("veritee: error:")]


def test_the_page_is_served_from_the_package_alone() -> None:
    from importlib import resources

    static = resources.files("veritee.app").joinpath("static")
    names = {p.name for p in static.iterdir()}
    assert names >= {"index.html", "dashboard.js", "dashboard.css"}
    for name in names:
        text = static.joinpath(name).read_text()
        assert "http://" not in text and "https://" not in text, name  # no CDN, no elsewhere
    assert "innerHTML" not in static.joinpath("dashboard.js").read_text().replace(
        "No innerHTML", ""
    )
