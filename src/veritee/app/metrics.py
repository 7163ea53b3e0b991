"""The node agent's Prometheus metrics (``GET /metrics``), read from the agent at scrape time.

What a scrape shows, and why it may show it to whoever reaches the API port:

* events in (handed to a local module's inbox) and out (sent on to a peer node or to a
  user's mailbox) per connection id: the id is in the clear header of every event on the
  wire, so anyone on the path counts as much;
* events dropped, by reason and by who dropped them (the agent: no route, malformed...; the
  secure world: replay, altered, misrouted, malformed; failed deliveries): summed over the
  node, never per module;
* each link's queue depth and whether it is up (what ``/v1/status`` shows anyone);
* modules per state (loaded, stopped, failed), counted over the node: which modules run is
  for each app's owner (``/v1/apps/APP/status``, signed);
* the latency of calls into the secure world.

No key, event content, app or module name appears. Bind the API (or put a proxy before
``/metrics``) where only the operator's scraper reaches it, as for any metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from veritee.app.agent import NodeAgent

CONTENT_TYPE = CONTENT_TYPE_LATEST

# A call into the secure world is a Unix-socket round trip plus the module's run: from tens of
# microseconds (an event) to seconds (a load that compiles); the buckets span that range.
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0)
MODULE_STATES = ("loaded", "stopped", "failed")


class NodeMetrics:
    """One agent's registry: the call histogram, and a collector over the agent's state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tee_calls = Histogram(
            "veritee_node_tee_call_seconds",
            "Time of one call into the secure world (load, attest, deliver, request...).",
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )

    @property
    def observe_call(self) -> Callable[[float], None]:
        return self.tee_calls.observe

    def watch(self, agent: NodeAgent) -> None:
        self.registry.register(_AgentCollector(agent))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AgentCollector(Collector):
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        snap = self.agent.metrics_snapshot()
        events = CounterMetricFamily(
            "veritee_node_events",
            "Events per connection id and direction (in: to a local module's inbox; out: to a "
            "peer node or a user's mailbox).",
            labels=["conn", "direction"],
        )
        for (conn, direction), n in sorted(snap.flows.items()):
            events.add_metric([conn, direction], n)
        yield events
        dropped = CounterMetricFamily(
            "veritee_node_events_dropped",
            "Events dropped, by reason and by who dropped them (agent or secure-world).",
            labels=["by", "reason"],
        )
        for (by, reason), n in sorted(snap.dropped.items()):
            dropped.add_metric([by, reason], n)
        yield dropped
        queued = GaugeMetricFamily(
            "veritee_node_link_queued_events",
            "Events kept for a peer node and not yet acknowledged by it, per link.",
            labels=["link"],
        )
        up = GaugeMetricFamily(
            "veritee_node_link_up", "1 while the link to a peer node is up.", labels=["link"]
        )
        for link, info in sorted(snap.links.items()):
            queued.add_metric([link], int(info.get("queued", 0)))
            up.add_metric([link], 1 if info.get("up") else 0)
        yield queued
        yield up
        inbox = GaugeMetricFamily(
            "veritee_node_inbox_events", "Events waiting in local modules' inboxes (summed)."
        )
        inbox.add_metric([], snap.inbox)
        yield inbox
        modules = GaugeMetricFamily(
            "veritee_node_modules", "Modules on this node, by state.", labels=["state"]
        )
        for state in MODULE_STATES:
            modules.add_metric([state], snap.modules.get(state, 0))
        yield modules
        apps = GaugeMetricFamily("veritee_node_apps", "Apps on this node (as /v1/info lists).")
        apps.add_metric([], snap.apps)
        yield apps
