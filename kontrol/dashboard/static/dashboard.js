// Kontrol dashboard: rows follow the server-sent events of `events` (snapshot, then add/update/remove).
// Everything from the server is put in the page as text (textContent), never as HTML: kites choose
// their own names, and a name must not become markup.
"use strict";

(() => {
  const FILTER_DELAY_MS = 250;  // wait this long after the last keystroke before re-querying
  const RECONNECT_MS = 2000;    // after the stream closed for good, look again this much later
  const TICK_MS = 1000;         // relative times ("5 s ago") are recounted this often
  const KINDS = {
    websocket: ["websocket", "registered over its websocket; removed when it closes"],
    http: ["HTTP", "registered over HTTP; expires when its heartbeats stop"],
    self: ["Kontrol", "this Kontrol's own entry"],
    "": ["elsewhere", "registered through another Kontrol on the same storage"],
  };

  const $ = (id) => document.getElementById(id);
  const rows = new Map();
  let source = null;
  let skew = 0;  // browser clock minus server clock, seconds
  let filter = "";
  let renderQueued = false;
  let filterTimer = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(state, text) {
    const status = $("status");
    status.className = "status " + state;
    status.textContent = text;
  }

  function ago(ts) {
    if (ts === null || ts === undefined) return "—";
    const s = Math.max(0, Math.round(Date.now() / 1000 - skew - ts));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function timeCell(label, ts) {
    const td = el("td", "time");
    td.dataset.label = label;
    if (ts !== null && ts !== undefined) {
      td.dataset.ts = String(ts);
      td.title = new Date(ts * 1000).toLocaleString();
    }
    td.textContent = ago(ts);
    return td;
  }

  function groupKey(k) {
    return "/" + [k.username, k.environment, k.name, k.version].join("/");
  }

  function kiteRow(k) {
    const tr = el("tr", "kite");
    tr.dataset.id = k.id;
    const who = el("td", "ident");
    who.dataset.label = "Kite";
    who.append(el("code", "id", k.id), el("span", "where", k.region + " · " + k.hostname));
    const url = el("td", "url");
    url.dataset.label = "URL";
    url.append(el("code", "", k.url));
    const [kindText, kindHelp] = KINDS[k.kind] || [k.kind, ""];
    const kind = el("td", "kind");
    kind.dataset.label = "Kind";
    const badge = el("span", "badge " + (k.kind || "elsewhere"), kindText);
    badge.title = kindHelp;
    kind.append(badge);
    tr.append(who, url, kind, timeCell("Registered", k.registeredAt), timeCell("Last heard", k.lastSeen));
    return tr;
  }

  function render() {
    renderQueued = false;
    const table = $("kites");
    table.querySelectorAll("tbody").forEach((b) => b.remove());
    const groups = new Map();
    for (const k of rows.values()) {
      const key = groupKey(k);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(k);
    }
    const keys = [...groups.keys()].sort();
    for (const key of keys) {
      const members = groups.get(key).sort((a, b) =>
        (a.region + a.hostname + a.id).localeCompare(b.region + b.hostname + b.id));
      const body = el("tbody", "group");
      body.dataset.group = key;
      const head = el("tr", "group-head");
      const th = el("th");
      th.colSpan = 5;
      th.append(el("span", "path", key), el("span", "count", String(members.length)));
      head.append(th);
      body.append(head, ...members.map(kiteRow));
      table.append(body);
    }
    const users = new Set([...rows.values()].map((k) => k.username));
    $("count").textContent = rows.size + (rows.size === 1 ? " kite" : " kites") + " in " + keys.length +
      (keys.length === 1 ? " group" : " groups") + " of " + users.size + (users.size === 1 ? " user" : " users");
    $("empty").hidden = rows.size > 0;
  }

  function queueRender() {
    if (!renderQueued) {
      renderQueued = true;
      setTimeout(render, 0);
    }
  }

  function renderKeyPairs(pairs) {
    const body = $("keypairs").querySelector("tbody");
    body.replaceChildren(...pairs.map((p) => {
      const tr = el("tr", p.retiredAt ? "retired" : "active");
      tr.dataset.id = p.id;
      const id = el("td", "ident");
      id.dataset.label = "Id";
      id.append(el("code", "", p.id));
      const state = el("td", "state");
      state.dataset.label = "State";
      state.textContent = p.retiredAt ? "retired " + ago(p.retiredAt) : p.current ? "active · signs" : "active";
      tr.append(id, timeCell("Created", p.createdAt), state);
      return tr;
    }));
  }

  function tick() {
    document.querySelectorAll("[data-ts]").forEach((td) => { td.textContent = ago(Number(td.dataset.ts)); });
  }

  function onEvent(name, handler) {
    source.addEventListener(name, (e) => handler(JSON.parse(e.data)));
  }

  function checkSession() {
    setStatus("offline", "disconnected");
    fetch("api/session", { credentials: "same-origin", cache: "no-store" })
      .then((r) => { if (r.status === 401) window.location.assign("login"); else setTimeout(connect, RECONNECT_MS); })
      .catch(() => setTimeout(connect, RECONNECT_MS));
  }

  function connect() {
    if (source) source.close();
    setStatus("connecting", "connecting…");
    source = new EventSource("events" + (filter ? "?q=" + encodeURIComponent(filter) : ""));
    onEvent("snapshot", (d) => {
      skew = Date.now() / 1000 - d.now;
      rows.clear();
      d.kites.forEach((k) => rows.set(k.id, k));
      renderKeyPairs(d.keyPairs);
      $("filter-error").textContent = "";
      setStatus("live", "live");
      queueRender();
    });
    onEvent("add", (k) => { rows.set(k.id, k); queueRender(); });
    onEvent("update", (k) => { rows.set(k.id, k); queueRender(); });
    onEvent("remove", (k) => { rows.delete(k.id); queueRender(); });
    onEvent("keypairs", renderKeyPairs);
    onEvent("invalid", (d) => {
      source.close();
      rows.clear();
      queueRender();
      $("filter-error").textContent = d.error;
      setStatus("idle", "filter error");
    });
    onEvent("expired", () => { source.close(); window.location.assign("login"); });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) checkSession();
      else setStatus("connecting", "reconnecting…");
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    const input = $("filter");
    filter = decodeURIComponent(window.location.hash.slice(1));
    input.value = filter;
    input.addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        if (input.value.trim() === filter) return;
        filter = input.value.trim();
        history.replaceState(null, "", filter ? "#" + encodeURIComponent(filter) : window.location.pathname);
        connect();
      }, FILTER_DELAY_MS);
    });
    setInterval(tick, TICK_MS);
    connect();
  });
})();
