// The Veritee dashboard: polls /api/view and shows it. Everything shown comes from node
// agents, the verifier or the state file, and node agents are untrusted: every value goes in
// as text (textContent, setAttribute), never as markup. No innerHTML anywhere in this file.
"use strict";

const KEY = new URLSearchParams(location.hash.slice(1)).get("key") || "";
let polls = 0;

function text(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function el(tag, content, cls) {
  const node = document.createElement(tag);
  if (content !== undefined) node.textContent = text(content);
  if (cls) node.className = cls;
  return node;
}

function counts(map) {
  if (!map || typeof map !== "object") return "0";
  const parts = Object.entries(map).map(([k, v]) => `${k} ${text(v)}`);
  return parts.length ? parts.join(", ") : "0";
}

function tone(status) {
  if (status === "connected" || status === "affirming" || status === "ok") return "good";
  if (status === "warning" || status === "pending" || status === "attested") return "warn";
  if (status === "disabled" || status === "retired") return "dim";
  return "bad";
}

function row(tbody, name, cells) {
  const tr = document.createElement("tr");
  tr.setAttribute("data-name", text(name));
  for (const c of cells) {
    const td = c instanceof Node ? wrap(c) : el("td", c.value, c.cls);
    if (!(c instanceof Node) && c.field) td.setAttribute("data-field", c.field);
    if (!(c instanceof Node) && c.title) td.title = text(c.title);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}

function wrap(node) {
  const td = document.createElement("td");
  td.appendChild(node);
  return td;
}

function fill(id, items, render) {
  const tbody = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement("tbody");
  for (const item of Array.isArray(items) ? items : []) render(fresh, item);
  tbody.replaceWith(fresh);
}

function when(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString() : "-";
}

function trust(t) {
  const box = document.createElement("div");
  if (!t || typeof t !== "object" || Object.keys(t).length === 0) {
    box.textContent = "- (no EAR: appraised locally)";
    box.className = "dim";
    return box;
  }
  if (t.error) {
    box.textContent = `not shown: ${text(t.error)}`;
    box.className = "bad";
    return box;
  }
  for (const [name, sub] of Object.entries(t.submods || {})) {
    const line = el("div", undefined, "submod");
    line.appendChild(el("span", `${name}: ${text(sub && sub.status)}`, tone(sub && sub.status)));
    const list = el("ul", undefined, "claims");
    for (const c of (sub && Array.isArray(sub.claims)) ? sub.claims : []) {
      const item = el("li", `${text(c.claim)} ${text(c.code)} (${text(c.tier)})`);
      item.title = text(c.meaning);
      list.appendChild(item);
    }
    line.appendChild(list);
    box.appendChild(line);
  }
  return box;
}

function render(view) {
  document.getElementById("app").textContent = text(view.app);
  const modules = Array.isArray(view.modules) ? view.modules : [];
  const nodes = Array.isArray(view.nodes) ? view.nodes : [];
  const ok = modules.filter((m) => m.status === "connected").length;
  const up = nodes.filter((n) => n.up === true).length;
  const v = view.verifier || {};
  document.getElementById("summary").textContent =
    `${ok}/${modules.length} modules connected · ${up}/${nodes.length} node agents up · ` +
    `attested via ${v.url ? text(v.url) : "local appraisal"}` +
    (view.owner === false
      ? " · no deployment key beside the state file: modules' live counts are not shown"
      : "");

  fill("nodes", nodes, (tb, n) => row(tb, n.name, [
    { value: n.name },
    { value: n.url, cls: "mono" },
    { value: n.up ? "up" : "down", cls: n.up ? "good" : "bad", field: "up", title: n.error },
    { value: n.health && n.health.detail, cls: n.health && n.health.ok ? "good" : "bad" },
    { value: n.queued, field: "queued" },
    { value: counts(n.agent_drops), field: "agent-drops" },
  ]));

  fill("modules", modules, (tb, m) => {
    const a = m.attestation || {};
    let status = text(m.status);
    if (m.status === "connected" && m.running === false) status += " (not running)";
    const measurement = typeof m.measurement === "string" && m.measurement
      ? m.measurement.slice(0, 16) + "…" : "-";
    row(tb, m.name, [
      { value: m.name },
      { value: m.node },
      { value: status, cls: tone(m.running === false ? "down" : m.status), field: "status",
        title: m.reason },
      { value: measurement, cls: "mono", field: "measurement", title: m.measurement },
      { value: a.status ? `${text(a.status)}${a.lifecycle ? " · " + text(a.lifecycle) : ""}` : "-",
        cls: tone(a.status), field: "attestation" },
      trust(m.trust),
      { value: m.delivered, field: "delivered" },
      { value: counts(m.dropped), field: "dropped" },
    ]);
  });

  const conns = (Array.isArray(view.connections) ? view.connections : [])
    .filter((c) => !(c.implicit && c.status === "connected"));
  fill("connections", conns, (tb, c) => {
    const e = c.events || {};
    row(tb, c.name, [
      { value: c.name },
      { value: `${text(c.from)} → ${text(c.to)}`, cls: "mono" },
      { value: c.status, cls: tone(c.status), field: "status", title: c.reason },
      { value: `${text(e.in || 0)} / ${text(e.out || 0)}`, field: "events" },
      { value: counts(c.dropped), field: "dropped" },
    ]);
  });

  const health = v.health || {};
  document.getElementById("verifier").textContent = v.url
    ? `verifier ${text(v.url)}: ${text(health.detail)} · appraisals since it started: ` +
      counts(v.appraisals)
    : text(v.detail);
  fill("appraisals", view.appraisals, (tb, a) => row(tb, a.module, [
    { value: when(a.at) },
    { value: a.module },
    { value: a.status, cls: tone(a.status) },
    { value: a.appraisal, cls: "mono" },
    { value: a.via, cls: "mono" },
    { value: Array.isArray(a.reasons) ? a.reasons.join("; ") : a.reasons },
  ]));
  const note = document.getElementById("sessions-note");
  if (v.sessions === null || v.sessions === undefined) {
    note.textContent = v.url
      ? "Give 'veritee dashboard' the verifier's token (--verifier-token-file) to list them."
      : "";
  } else if (!Array.isArray(v.sessions)) {
    note.textContent = text(v.sessions);
  } else {
    note.textContent = "";
  }
  fill("sessions", Array.isArray(v.sessions) ? v.sessions : [], (tb, s) => row(tb, s.id, [
    { value: when(s.created) },
    { value: s.id, cls: "mono" },
    { value: s.status },
    { value: s.outcome, cls: tone(s.outcome) },
  ]));
  document.getElementById("updated").textContent = when(view.at);
}

function problem(message) {
  const p = document.getElementById("problem");
  p.hidden = !message;
  p.textContent = message || "";
}

async function poll() {
  try {
    const response = await fetch("/api/view", {
      headers: { Authorization: `Bearer ${KEY}` },
      cache: "no-store",
    });
    const body = await response.json();
    if (!response.ok) {
      problem(text(body && body.error));
    } else {
      render(body);
      problem("");
    }
    document.body.setAttribute("data-polls", String(++polls));
    setTimeout(poll, 1000 * (body && typeof body.poll === "number" ? body.poll : 2));
  } catch (err) {
    problem(`the dashboard did not answer: ${err}`);
    setTimeout(poll, 2000);
  }
}

poll();
