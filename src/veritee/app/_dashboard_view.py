"""What the dashboard shows (app/dashboard.py), read afresh from the state file, each node
agent's signed status, ``/health`` and ``/metrics``, and the verifier.

Node agents are untrusted: their answers are read with their types checked
(app/status.py) and cut to :data:`MAX_TEXT` characters per string and :data:`MAX_ITEMS`
entries per list or map, and every probe is bounded in size and in time as a whole.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from veritee.app import state as state_mod
from veritee.app.errors import StateError
from veritee.app.status import collect
from veritee.errors import Error
from veritee.servicetls import client_verify

log = logging.getLogger("veritee.dashboard")

POLL_SECONDS = 1.0  # how often the page asks for a new view
# Several tabs, or a page polling fast, share one view this fresh: the nodes are asked at
# most this often whatever the browsers do.
MIN_VIEW_SECONDS = 0.5
PROBE_TIMEOUT = 3.0  # a node's or the verifier's /health and /metrics; slower is shown down
# A node agent's answer is attacker-shaped: one string, list or map of it is cut to these, so
# a hostile agent cannot make the page (or this server) hold megabytes per poll.
MAX_TEXT = 2000
MAX_ITEMS = 200
MAX_DEPTH = 16  # the view itself nests 9 deep (a module's trust vector claims)
MAX_PROBE_BYTES = 1024 * 1024  # a /metrics page of a node with thousands of connections
RECENT_SESSIONS = 20  # the verifier's latest sessions shown (with its token)


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data no bigger than the limits above (bytes become hex)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, bytes):
        return value[: MAX_TEXT // 2].hex()
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k)[:MAX_TEXT]: bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [bounded(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return str(value)[:MAX_TEXT]


def _get(client: httpx.Client, url: str) -> tuple[int, bytes] | str:
    """(status, body) of a GET, at most MAX_PROBE_BYTES of it and whole within PROBE_TIMEOUT
    (a trickle keeps each read in time); or why it failed."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        with client.stream("GET", url) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_PROBE_BYTES:
                    return f"{url} answered over {MAX_PROBE_BYTES} bytes"
                if time.monotonic() > deadline:
                    return f"{url} took over {PROBE_TIMEOUT:g} s to answer"
            return response.status_code, bytes(body)
    except httpx.HTTPError as exc:
        return f"{url} did not answer: {exc or type(exc).__name__}"


def _health(client: httpx.Client, base: str) -> dict[str, Any]:
    got = _get(client, f"{base}/health")
    if isinstance(got, str):
        return {"ok": False, "detail": got}
    status, body = got
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    detail = answer.get("status") if isinstance(answer, dict) else None
    if not isinstance(detail, str):
        detail = f"HTTP {status}" + (", not a health answer" if status == 200 else "")
    return {"ok": status == 200 and detail == "ok", "detail": detail}


def _samples(client: httpx.Client, base: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` on ``base``'s /metrics ([] if it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    got = _get(client, f"{base}/metrics")
    if isinstance(got, str) or got[0] != 200:
        return []
    try:
        return [
            (dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(got[1].decode("utf-8", "replace"))
            for s in family.samples
            if s.name == name
        ]
    except (ValueError, TypeError, IndexError):  # not the exposition format: no figures
        return []


def _trust(attestation: dict[str, Any], key: Any) -> dict[str, Any]:
    """The EAR the deploy acted on, checked under the verifier's key at the time it was
    recorded: per submodule its status and the claims it made (code, tier, meaning)."""
    from veritee.verifier import ear

    token = attestation.get("ear")
    if not isinstance(token, str):
        return {}
    if key is None:
        return {"error": "the verifier's key is unknown (verifier down?)"}
    at = attestation.get("at")
    try:
        result = ear.verify(token, key, now=int(at) if isinstance(at, int | float) else None)
    except Error as exc:
        return {"error": str(exc)}
    described = ear.describe(result)  # each submodule's eight claims, in its vector's order
    submods = {}
    for name, a in result.submods.items():
        rows = [r for r in described if r.submod == name]
        claims = [
            {"claim": claim, "code": code, "tier": row.tier, "meaning": row.meaning}
            for (claim, code), row in zip(a.trust_vector.items(), rows, strict=True)
            if code  # 0: no claim made
        ]
        submods[name] = {"status": a.status, "claims": claims}
    return {"appraisal": str(result.extensions.get(ear.APPRAISAL_ID, "")), "submods": submods}


class View:
    """What the page shows, read afresh (at most every MIN_VIEW_SECONDS) from the state file,
    the node agents and the verifier."""

    def __init__(self, state: Path, *, verifier_token: str | None = None) -> None:
        self.state = state
        self.verifier_token = verifier_token
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None
        self._verifier_key: tuple[str, Any] | None = None  # (url, its EAR key)

    def current(self) -> dict[str, Any]:
        """The latest view; raise Error (e.g. StateError) when there is no deployment."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < MIN_VIEW_SECONDS:
                return self._last[1]
            view: dict[str, Any] = bounded(self._read())
            self._last = (time.monotonic(), view)
            return view

    def _read(self) -> dict[str, Any]:
        dep = state_mod.load(self.state)
        try:  # without the app's key, nodes show nothing of its modules
            key = state_mod.load_keys(self.state).deployment
        except StateError:
            key = None
        with (
            httpx.Client(timeout=PROBE_TIMEOUT, verify=client_verify()) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            report = pool.submit(collect, dep, key)
            urls = {n: s.url for n, s in dep.nodes.items()}
            health = {n: pool.submit(_health, client, u) for n, u in urls.items()}
            flows = {
                n: pool.submit(_samples, client, u, "veritee_node_events_total")
                for n, u in urls.items()
            }
            verifier = pool.submit(self._verifier, client, dep.verifier)
            out = report.result()
            events: dict[str, dict[str, float]] = {}
            for node in out["nodes"]:
                node["health"] = health[node["name"]].result()
                for labels, n in flows[node["name"]].result():
                    per = events.setdefault(labels.get("conn", ""), {})
                    direction = labels.get("direction", "")
                    per[direction] = per.get(direction, 0) + n
            out["verifier"] = verifier.result()
        for conn in out["connections"]:
            conn["events"] = events.get(conn["id"], {})
        ear_key = out["verifier"].pop("_key", None)
        for m in out["modules"]:
            attestation = m["attestation"]
            m["trust"] = _trust(attestation, ear_key)
            m["attestation"] = {k: v for k, v in attestation.items() if k != "ear"}
        out["appraisals"] = sorted(
            (
                {"module": m["name"], **m["attestation"]}
                for m in out["modules"]
                if m["attestation"].get("status")
            ),
            key=lambda a: -float(a.get("at") or 0),
        )
        out["owner"] = key is not None  # without the app's key, no module's live counts
        out["at"] = time.time()
        out["poll"] = POLL_SECONDS
        return out

    def _verifier(self, client: httpx.Client, url: str | None) -> dict[str, Any]:
        if not url:
            return {"url": None, "detail": "modules were appraised locally"}
        base = url.rstrip("/")
        out: dict[str, Any] = {"url": base, "health": _health(client, base)}
        counts: dict[str, float] = {}
        for labels, n in _samples(client, base, "veritee_appraisals_total"):
            outcome = labels.get("outcome", "")
            counts[outcome] = counts.get(outcome, 0) + n
        out["appraisals"] = counts
        out["_key"] = self._ear_key(base)
        if self.verifier_token:
            out["sessions"] = self._sessions(base)
        else:
            out["sessions"] = None  # the page says how to see them
        return out

    def _ear_key(self, base: str) -> Any:
        if self._verifier_key is not None and self._verifier_key[0] == base:
            return self._verifier_key[1]
        from veritee.verifier.client import VerifierClient

        try:
            with VerifierClient(base, timeout=PROBE_TIMEOUT) as vc:
                key = vc.public_key()
        except Error as exc:
            log.info("verifier key unavailable: %s", exc)
            return None
        self._verifier_key = (base, key)
        return key

    def _sessions(self, base: str) -> list[dict[str, Any]] | str:
        from veritee.verifier.client import VerifierClient

        try:
            with VerifierClient(base, token=self.verifier_token, timeout=PROBE_TIMEOUT) as vc:
                return vc.sessions(RECENT_SESSIONS)
        except Error as exc:
            return str(exc)
