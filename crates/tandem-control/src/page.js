"use strict";
// tandem's status page: renders /status.json twice a second, the last hour's rates
// from /history.json every five seconds and the timeline from /events.json. Text from
// the daemon (names, check errors) only ever goes through textContent.
(() => {
  const boot = JSON.parse(document.getElementById("boot").textContent);
  let snapshot = boot.snapshot;
  let history = boot.history;
  let events = [];
  let lastSeq = 0;
  let lastMs = 0;
  let lastOk = Date.now();

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function ago(secs) {
    secs = Math.max(0, Math.floor(secs));
    if (secs < 60) return secs + "s";
    if (secs < 3600) return Math.floor(secs / 60) + "m " + (secs % 60) + "s";
    if (secs < 86400) return Math.floor(secs / 3600) + "h " + Math.floor((secs % 3600) / 60) + "m";
    return Math.floor(secs / 86400) + "d " + Math.floor((secs % 86400) / 3600) + "h";
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? n + " B" : v.toFixed(1) + " " + units[u];
  }
  function rate(r) {
    return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
  }
  function num(v) { return el("td", { class: "num" }, v); }
  function badge(text, cls) { return el("span", { class: "badge " + cls }, text); }
  function table(id, caption, heads, rows, attrs) {
    return el("div", { class: "scroll" },
      el("table", Object.assign({ id }, attrs || {}),
        el("caption", {}, caption),
        el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)));
  }

  // A small chart of one or more series on one scale (points may be null: a gap), with
  // its reading in words for screen readers. `lines` is [[values, class, name]].
  function chart(lines, what, fmt) {
    const w = 120, h = 26;
    const last = (values) => { for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i]; return null; };
    const peakOf = (values) => Math.max(0, ...values.filter((v) => v !== null));
    const peak = Math.max(0, ...lines.map(([values]) => peakOf(values)));
    const longest = Math.max(0, ...lines.map(([values]) => values.length));
    // The chart spans what is kept, at least 5 minutes, at most the whole history: a
    // young node's few points are not squeezed into the right edge of an hour.
    const n = Math.min(history.points, Math.max(60, longest));
    const read = lines.map(([values, , name]) => {
      const now = last(values);
      return `${name ? name + " " : ""}now ${now === null ? "none" : fmt(now)}, peak ${fmt(peakOf(values))}`;
    });
    const label = longest > 0
      ? `${what}, last ${ago(longest * history.step_secs)}: ${read.join("; ")}`
      : `${what}: no data yet`;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    svg.setAttribute("class", "spark");
    const title = document.createElementNS(ns, "title");
    title.textContent = label;
    svg.append(title);
    const scale = peak > 0 ? (h - 2) / peak : 0;
    const dx = w / (n - 1);
    for (const [values, cls] of lines) {
      const x0 = w - (values.length - 1) * dx;
      // Runs of points between gaps; a run of one point is drawn as the step it stands for.
      let run = [];
      const flush = () => {
        if (run.length === 1) run.unshift([run[0][0] - dx * 4, run[0][1]]);
        if (run.length > 1) {
          const line = document.createElementNS(ns, "polyline");
          line.setAttribute("points", run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
          line.setAttribute("class", cls);
          svg.append(line);
        }
        run = [];
      };
      values.forEach((v, i) => { if (v === null) flush(); else run.push([x0 + i * dx, h - 1 - v * scale]); });
      flush();
    }
    const now = lines.map(([values]) => last(values)).map((v) => (v === null ? "\u2013" : fmt(v)));
    return el("span", { class: "chart" }, svg, el("span", { class: "reading" }, now.join(" / ")));
  }
  function spark(values, what, cls) {
    return chart([[values, cls]], what, (r) => rate(r) + "/s");
  }
  function ms(v) {
    return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " ms";
  }
  // The p50 and p99 response times of an HTTP service or backend, "\u2013" in TCP mode.
  function latency(h, what) {
    if (!h.p50_ms || h.p50_ms.length === 0) return el("td", { class: "num" }, "\u2013");
    return el("td", { class: "latency" },
      chart([[h.p50_ms, "ok", "p50"], [h.p99_ms, "slow", "p99"]], `${what} response time`, ms));
  }

  function stateOf(b) {
    if (!b.enabled) return ["disabled", "drain"];
    if (b.health === "down") return ["down", "down"];
    if (b.health === "up") return ["up", "up"];
    if (b.health === "pending") return ["pending", "unchecked"];
    return ["unchecked", "unchecked"];
  }

  function header(s) {
    const meta = [`version ${s.version}`, `pid ${s.pid}`, `up ${ago(s.uptime_secs)}`, `${s.reloads} reload(s)`];
    if (s.config_path) meta.push(s.config_path);
    const stale = (Date.now() - lastOk) / 1000;
    return [
      el("h1", {}, "tandem ", el("span", { id: "node" }, s.node)),
      el("div", { class: "meta" }, meta.join(" \u00b7 ")),
      el("p", { id: "live", class: stale > 3 ? "err" : "meta", role: "status" },
        stale > 3 ? `tandem has not answered for ${ago(stale)}: the figures below are stale`
          : "live: updated twice a second"),
    ];
  }

  function ha(s) {
    const out = [el("h2", {}, "High availability")];
    // One instance is an object, several an array (see HaInstances).
    const list = !s.ha ? [] : Array.isArray(s.ha) ? s.ha : [s.ha];
    if (!list.length) return out.concat(el("p", { id: "ha" }, "not configured"));
    return out.concat(list.map((h, i) => {
      const st = h.state.toLowerCase();
      const cls = st === "master" ? "master" : st === "backup" ? "backup" : "unchecked";
      return el("p", { id: i === 0 ? "ha" : `ha-${h.interface}-${h.vrid}` }, "role ", badge(h.state, cls),
        ` \u00b7 ${h.interface} vrid ${h.vrid} \u00b7 priority ${h.effective_priority} (configured ${h.priority})` +
        (h.master ? ` \u00b7 master ${h.master}` : "") + ` \u00b7 ${h.virtual_ips.join(", ")}`);
    }));
  }

  function seriesOf(list, match) {
    return list.find(match) || { connections: [], errors: [], p50_ms: [], p99_ms: [] };
  }

  function services(s) {
    const rows = s.services.map((sv) => {
      const h = seriesOf(history.services, (x) => x.service === sv.name);
      const errors = sv.rejected + sv.no_backend + sv.accept_errors + (sv.client_limited || 0) +
        (sv.node_limited || 0) + (sv.tls_handshake_errors || 0) + (sv.bad_requests || 0) + (sv.client_timeouts || 0) +
        Object.values(sv.proxy_refused || {}).reduce((a, b) => a + b, 0);
      return el("tr", { "data-service": sv.name },
        el("td", {}, sv.name), el("td", {}, sv.mode), el("td", {}, sv.listen.join(", ")), el("td", {}, sv.pool),
        num(sv.active), num(sv.total), el("td", {}, spark(h.connections, `${sv.name} connections per second`, "ok")),
        num(errors), el("td", {}, spark(h.errors, `${sv.name} errors per second`, "bad")),
        latency(h, sv.name));
    });
    return [el("h2", {}, "Services"),
      table("services", "Services: connections now, in total and over the last hour",
        ["service", "mode", "listen", "pool", "active", "total", "connections/s", "errors", "errors/s", "response p50 / p99"], rows)];
  }

  function pools(s) {
    const out = [];
    for (const p of s.pools) {
      const meta = [p.balance];
      if (p.sticky_entries !== null && p.sticky_entries !== undefined) meta.push(`${p.sticky_entries} sticky entries`);
      if (p.fallback) meta.push(`fallback ${p.fallback}`);
      out.push(el("h2", {}, `Pool ${p.name} `, el("span", { class: "meta" }, meta.join(" \u00b7 "))));
      const rows = p.backends.map((b) => {
        const [label, cls] = stateOf(b);
        const h = seriesOf(history.backends, (x) => x.pool === p.name && x.backend === b.address);
        const since = b.enabled && b.health_since_secs !== null && b.health_since_secs !== undefined ? ago(b.health_since_secs) : "";
        let check = "\u2013";
        if (b.last_check) {
          check = b.last_check.ok
            ? `ok in ${b.last_check.latency_ms.toFixed(1)} ms, ${ago(b.last_check.age_secs)} ago`
            : el("span", {}, el("span", { class: "err" }, b.last_check.error), `, ${ago(b.last_check.age_secs)} ago`);
        }
        // What the backend's agent says (agent check), beside the check's verdict.
        if (b.agent) check = el("span", {}, check, el("br"), el("span", { class: "agent" }, `agent: ${b.agent}`));
        const act = boot.write
          ? el("td", {}, el("button", {
            type: "button", class: "act", "data-pool": p.name, "data-address": b.address,
            "data-action": b.enabled ? "disable" : "enable",
            "aria-label": `${b.enabled ? "drain" : "enable"} ${b.address} of pool ${p.name}`,
          }, b.enabled ? "drain" : "enable"))
          : null;
        return el("tr", { class: "backend", "data-address": b.address, "data-state": label },
          el("td", {}, b.address + (b.backup ? " (backup)" : "")),
          el("td", {}, badge(label, cls), el("span", { class: "since" }, since)),
          num(b.weight), num(b.active), num(b.total), el("td", {}, spark(h.connections, `${b.address} connections per second`, "ok")),
          num(bytes(b.bytes_to_backend)), num(bytes(b.bytes_to_client)), num(b.connect_errors),
          el("td", {}, spark(h.errors, `${b.address} connect errors per second`, "bad")), latency(h, b.address),
          el("td", {}, check), act);
      });
      const heads = ["backend", "state", "weight", "active", "total", "connections/s", "in", "out", "connect errors", "errors/s",
        "response p50 / p99", "last check"];
      if (boot.write) heads.push("action");
      out.push(table(null, `Backends of pool ${p.name}`, heads, rows, { class: "pool", "data-pool": p.name }));
    }
    return out;
  }

  function sync(s) {
    const out = [el("h2", {}, "Sync peers")];
    if (!s.sync.length) return out.concat(el("p", { id: "sync" }, "not configured"));
    return out.concat(table("sync", "Sync peers", ["peer", "link", "synced", "sent", "received", "last error"],
      s.sync.map((p) => el("tr", {},
        el("td", {}, p.address + (p.name ? ` (${p.name})` : "")),
        el("td", {}, p.connected ? badge("up", "up") : badge("down", "down")),
        el("td", {}, p.synced ? "yes" : "no"), num(p.sent), num(p.received), el("td", {}, p.last_error || "")))));
  }

  function timeline() {
    const items = events.slice().sort((a, b) => b.at_ms - a.at_ms || b.seq - a.seq).map((e) => {
      const t = new Date(e.at_ms);
      return el("li", { class: "event " + e.kind, "data-kind": e.kind, "data-subject": e.subject },
        el("time", { datetime: t.toISOString() }, t.toLocaleTimeString()), " ",
        badge(e.kind, "kind"), " ", el("strong", {}, e.subject), " ", e.text,
        e.repeats ? el("span", { class: "meta" }, ` (\u00d7${e.repeats + 1})`) : null);
    });
    return [el("h2", {}, "Timeline"),
      items.length ? el("ol", { id: "timeline", reversed: true }, items) : el("p", { id: "timeline" }, "nothing yet")];
  }

  function render() {
    const app = document.getElementById("app");
    app.replaceChildren(...header(snapshot), ...ha(snapshot), ...services(snapshot), ...pools(snapshot),
      ...sync(snapshot), ...timeline(), el("p", { id: "result", role: "status", "aria-live": "polite" }, result));
  }
  let result = "";

  async function getJson(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  }
  async function pollStatus() {
    try { snapshot = await getJson("/status.json"); lastOk = Date.now(); } catch (e) { /* shown as stale */ }
    render();
  }
  async function pollHistory() {
    try { history = await getJson("/history.json"); } catch (e) { /* keep the last */ }
  }
  async function pollEvents() {
    try {
      const fresh = await getJson(`/events.json?since=${lastSeq}&since_ms=${lastMs}`);
      for (const e of fresh) {
        const i = events.findIndex((x) => x.seq === e.seq);
        if (i >= 0) events[i] = e; else events.push(e);
        lastSeq = Math.max(lastSeq, e.seq);
        lastMs = Math.max(lastMs, e.at_ms);
      }
      if (events.length > 500) events = events.slice(-500);
    } catch (e) { /* next time */ }
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.act");
    if (!b) return;
    b.disabled = true;
    try {
      const r = await fetch("/action", {
        method: "POST",
        headers: { "content-type": "application/json", "x-tandem-action": "1" },
        body: JSON.stringify({ action: b.dataset.action, pool: b.dataset.pool, address: b.dataset.address }),
      });
      const reply = await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }));
      result = reply.ok ? `${b.dataset.action === "disable" ? "drained" : "enabled"} ${b.dataset.address} of pool ${b.dataset.pool}`
        : `refused: ${reply.error}`;
    } catch (e) {
      result = `failed: ${e}`;
    }
    await pollStatus();
  });

  render();
  pollHistory().then(render);
  pollEvents().then(render);
  setInterval(pollStatus, 500);
  setInterval(pollEvents, 1000);
  setInterval(pollHistory, 5000);
})();
