// StreamFlow console: vanilla JS over /api/v1. Every value is put in the page as text
// (never as HTML); the token lives in sessionStorage and travels in a header only.
"use strict";

const TOKEN_KEY = "streamflow.console.token";
const main = () => document.getElementById("main");
let poller = null;
let integration = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token() };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch("/api/v1" + path, {
    method: options.method || "GET", headers, credentials: "omit", cache: "no-store",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  if (res.status === 401) { sessionStorage.removeItem(TOKEN_KEY); route(); throw new Error("sign in"); }
  if (!res.ok) { const err = new Error(data.error || res.statusText); err.status = res.status; throw err; }
  return data;
}

const fmtTime = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–";
const fmtDur = (ms) => ms === null || ms === undefined ? "–" : ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(2) + " s";
const badge = (s) => h("span", { class: "badge " + s }, s.replace("_", " "));
const pretty = (v) => JSON.stringify(v, null, 2);

function params() {
  const q = location.hash.split("?")[1] || "";
  return Object.fromEntries(new URLSearchParams(q));
}

function setPage(title, ...nodes) {
  const m = main();
  m.replaceChildren(h("h1", {}, title), ...nodes.filter((n) => n !== null && n !== undefined));
  document.title = title + " · StreamFlow";
}

function showError(err) {
  main().append(h("div", { class: "error", role: "alert" }, String(err.message || err)));
}

// -- sign in -------------------------------------------------------------------------

function login() {
  const input = h("input", { type: "password", id: "token", autocomplete: "off",
    placeholder: "console or operator token" });
  const form = h("form", { class: "card login", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  } },
  h("h3", {}, "Sign in to the console"),
  h("p", { class: "muted" }, "The token is kept in this tab only and sent as an Authorization header."),
  input, h("button", { class: "primary", type: "submit" }, "Sign in"));
  main().replaceChildren(form);
  input.focus();
}

// -- flows ---------------------------------------------------------------------------

function planOf(flow) {
  const t = flow.trigger;
  const detail = t.cron || t.topic || t.path || t.every || (t.methods ? t.methods.join(",") : "") || "";
  const nodes = [h("div", { class: "node trigger" }, h("div", { class: "type" }, "trigger"),
    h("div", { class: "id" }, t.type), detail ? h("div", { class: "topic" }, String(detail)) : null,
    h("div", { class: "topic" }, "→ " + flow.topics.input))];
  for (const s of flow.steps) {
    nodes.push(h("span", { class: "arrow" }, "→"));
    nodes.push(h("div", { class: "node" }, h("div", { class: "type" }, s.type),
      h("div", { class: "id" }, s.id), s.topic ? h("div", { class: "topic" }, s.topic) : null,
      s.routes.length ? h("div", { class: "topic" }, s.routes.map((r) => r.when + " → " + r.steps.join(", ")).join("; ")) : null,
      s.compensate ? h("div", { class: "comp" }, "↺ undo: " + s.compensate) : null));
  }
  return h("div", { class: "plan" }, nodes);
}

async function overview() {
  const [info, stats] = await Promise.all([api("/integration"), api("/stats")]);
  const cards = info.flows.map((f) => {
    const st = stats.flows[f.name] || {};
    const hour = st.last_1h || {};
    const total = Object.values(hour).reduce((a, b) => a + b, 0);
    const m = st.metrics || {};
    return h("section", { class: "card", "data-flow": f.name },
      h("h3", {}, h("a", { href: "#/executions?flow=" + encodeURIComponent(f.name) }, f.name),
        " ", h("span", { class: "muted" }, f.description)),
      planOf(f),
      h("div", { class: "muted mono" }, "dead letters: " + f.topics.dead_letters +
        (f.topics.compensate ? " · compensations: " + f.topics.compensate : "") + " · events: " + f.events),
      h("div", { class: "stats" },
        h("div", { class: "stat" }, h("b", {}, String(st.per_minute_5m ?? 0)), h("span", {}, "executions/min (5 min)")),
        h("div", { class: "stat" }, h("b", {}, String(total)), h("span", {}, "executions (1 h)")),
        h("div", { class: "stat" }, h("b", {}, String(hour.completed || 0)), h("span", {}, "completed (1 h)")),
        h("div", { class: "stat" }, h("b", {}, ((st.error_rate_1h || 0) * 100).toFixed(1) + " %"), h("span", {}, "ended in error (1 h)")),
        h("div", { class: "stat" }, h("b", {}, String(m.failures || 0)), h("span", {}, "step failures (this process)")),
        h("div", { class: "stat" }, h("b", {}, String(m.dead_lettered || 0)), h("span", {}, "dead-lettered (this process)"))),
      h("div", { class: "actions" },
        h("a", { href: "#/executions?flow=" + encodeURIComponent(f.name) }, "Executions"),
        h("a", { href: "#/dead-letters?flow=" + encodeURIComponent(f.name) }, "Dead letters")));
  });
  const inst = info.instances.length
    ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Instance"), h("th", {}, "Version"), h("th", {}, "Deployed"), h("th", {}, "Config"))),
      h("tbody", {}, info.instances.map((i) => h("tr", {}, h("td", {}, h("a", { href: "#/executions?instance=" + encodeURIComponent(i.instance) }, i.instance)),
        h("td", {}, i.version), h("td", {}, fmtTime(i.deployed_ms)), h("td", { class: "mono" }, JSON.stringify(i.config))))))
    : h("p", { class: "muted" }, "No instances deployed.");
  setPage(info.name + " — flows", h("p", { class: "muted" }, info.description), ...cards,
    h("h2", {}, "Instances"), inst,
    h("p", { class: "muted" }, `This console keeps ${info.store.executions} executions (${(info.store.bytes / 1024).toFixed(0)} KiB).`));
}

// -- executions ----------------------------------------------------------------------

function execRow(e) {
  const tail = e.error ? h("span", { class: "err" }, e.error.slice(0, 140)) : e.step;
  return h("tr", { class: "row", "data-id": e.id, onclick: () => { location.hash = "#/execution/" + encodeURIComponent(e.id); } },
    h("td", {}, badge(e.status)),
    h("td", { class: "mono" }, h("a", { href: "#/execution/" + encodeURIComponent(e.id) }, e.id)),
    h("td", {}, e.flow), h("td", {}, e.instance || "–"), h("td", {}, e.trigger),
    h("td", { class: "nowrap" }, fmtTime(e.started_ms)), h("td", { class: "nowrap" }, fmtDur(e.duration_ms)),
    h("td", {}, tail, e.replays ? h("span", { class: "muted" }, " (replayed " + e.replays + "×)") : null));
}

async function executions() {
  const p = params();
  const flows = (integration || (integration = await api("/integration"))).flows.map((f) => f.name);
  const sel = (name, values) => h("select", { name }, h("option", { value: "" }, "any"),
    values.map((v) => h("option", { value: v, selected: p[name] === v }, v)));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = "#/executions?" + q.toString();
  } },
  h("label", {}, "Flow", sel("flow", flows)),
  h("label", {}, "Status", sel("status", ["running", "compensating", "completed", "filtered", "failed", "compensated", "compensation_failed"])),
  h("label", {}, "Instance", h("input", { name: "instance", value: p.instance || "", size: 14 })),
  h("label", {}, "Since", h("input", { name: "since", value: p.since || "", size: 6, placeholder: "1h" })),
  h("button", { class: "secondary", type: "submit" }, "Filter"),
  h("span", { class: "live", id: "live" }, "live"));
  const body = h("tbody", {});
  const table = h("table", { id: "executions" }, h("thead", {}, h("tr", {},
    ["Status", "Execution", "Flow", "Instance", "Trigger", "Started", "Took", "Step / error"].map((c) => h("th", {}, c)))), body);
  setPage("Executions", form, table);
  const q = new URLSearchParams(p);
  q.set("limit", "200");
  const data = await api("/executions?" + q.toString());
  let seq = data.seq;
  body.replaceChildren(...data.executions.map(execRow));
  if (!data.executions.length) body.append(h("tr", { class: "empty" }, h("td", { colspan: 8, class: "muted" }, "No executions match.")));
  poller = setInterval(async () => {
    const q2 = new URLSearchParams(p);
    q2.set("after", String(seq));
    q2.set("limit", "500");
    try {
      const d = await api("/executions?" + q2.toString());
      seq = Math.max(seq, d.seq);
      for (const e of d.executions) {
        const old = body.querySelector(`tr[data-id="${CSS.escape(e.id)}"]`);
        const row = execRow(e);
        row.classList.add("fresh");
        if (old) old.replaceWith(row); else body.prepend(row);
        body.querySelector("tr.empty")?.remove();
      }
    } catch (e) { /* shown on the next navigation */ }
  }, 2000);
}

async function execution(id) {
  const e = await api("/executions/" + encodeURIComponent(id));
  const start = e.timeline.length ? e.timeline[0].ts : e.started_ms;
  const items = e.timeline.map((ev) => h("li", { class: "ev-" + ev.event },
    h("b", {}, ev.event === "step" || ev.event === "retry" || ev.event === "failed" || ev.event === "filtered" ? ev.step : ev.event),
    " ", h("span", { class: "muted" }, ["step", "started", "completed", "compensated", "replayed"].includes(ev.event) ? "" : ev.event),
    h("span", { class: "when" }, "+" + (ev.ts - start) + " ms · attempt " + ev.attempt),
    ev.note ? h("div", { class: "muted" }, ev.note) : null,
    ev.error ? h("div", { class: "err" }, ev.error) : null,
    ev.payload !== null && ev.payload !== undefined ? h("details", {}, h("summary", {}, "payload"), h("pre", {}, pretty(ev.payload))) : null));
  const letters = e.dead_letters.map((d) => h("li", {},
    h("a", { href: "#/dead-letter/" + encodeURIComponent(d.flow) + "/" + encodeURIComponent(d.id) }, "dead letter " + d.id),
    " at step " + d.step + (d.compensated ? " · " + d.compensated : "") + (d.replayed ? " · replayed " + d.replayed + "×" : "")));
  const rerun = h("button", { class: "secondary", id: "rerun", onclick: async () => {
    if (!window.confirm("Start a new execution with this execution's input?")) return;
    try {
      const r = await api("/executions/" + encodeURIComponent(id) + "/rerun", { method: "POST", body: {} });
      location.hash = "#/execution/" + encodeURIComponent(r.execution_id);
    } catch (err) { showError(err); }
  } }, "Re-run");
  setPage("Execution " + e.id,
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "Status"), h("dd", {}, badge(e.status)),
        h("dt", {}, "Flow"), h("dd", {}, e.flow),
        h("dt", {}, "Trigger"), h("dd", {}, e.trigger),
        h("dt", {}, "Instance"), h("dd", {}, e.instance || "–"),
        h("dt", {}, "Started"), h("dd", {}, fmtTime(e.started_ms)),
        h("dt", {}, "Ended"), h("dd", {}, fmtTime(e.ended_ms)),
        h("dt", {}, "Took"), h("dd", {}, fmtDur(e.duration_ms)),
        h("dt", {}, "Replays"), h("dd", {}, String(e.replays)))),
      h("div", { class: "card" }, h("h3", {}, "Error"),
        e.error ? h("div", { class: "err mono" }, e.error) : h("p", { class: "muted" }, "None."),
        e.dead_letter ? h("div", { class: "letters" }, h("h3", {}, "Dead letters (" + e.dead_letter + ")"), h("ul", { id: "letters" }, letters)) : null,
        sessionRole === "operator" ? h("div", { class: "actions" }, rerun) : null)),
    h("div", { class: "card" }, h("h3", {}, "Timeline"), h("ol", { class: "timeline" }, items)));
  if (!["completed", "filtered", "failed", "compensated", "compensation_failed"].includes(e.status)) {
    poller = setTimeout(() => route(), 2000);
  }
}

// -- dead letters --------------------------------------------------------------------

async function deadLetters() {
  const p = params();
  const info = integration || (integration = await api("/integration"));
  const flow = p.flow || info.flows[0].name;
  const pick = h("select", { id: "dlq-flow", onchange: (ev) => { location.hash = "#/dead-letters?flow=" + encodeURIComponent(ev.target.value); } },
    info.flows.map((f) => h("option", { value: f.name, selected: f.name === flow }, f.name)));
  const data = await api("/flows/" + encodeURIComponent(flow) + "/dead-letters");
  const rows = data.dead_letters.map((d) => h("tr", { class: "row", "data-id": d.id,
    onclick: () => { location.hash = "#/dead-letter/" + encodeURIComponent(flow) + "/" + encodeURIComponent(d.id); } },
  h("td", { class: "mono" }, h("a", { href: "#/dead-letter/" + encodeURIComponent(flow) + "/" + encodeURIComponent(d.id) }, d.id)),
  h("td", { class: "nowrap" }, d.time), h("td", {}, d.step), h("td", {}, d.error_type),
  h("td", {}, d.compensated ? badge(d.compensated) : "no"), h("td", {}, d.replayed ? d.replayed + "×" : "no"),
  h("td", { class: "mono" }, h("a", { href: "#/execution/" + encodeURIComponent(d.execution_id) }, d.execution_id)),
  h("td", { class: "err" }, d.error.slice(0, 160))));
  setPage("Dead letters", h("div", { class: "filters" }, h("label", {}, "Flow", pick)),
    h("table", { id: "dead-letters" }, h("thead", {}, h("tr", {},
      ["Id", "Time", "Step", "Error type", "Compensated", "Replayed", "Execution", "Error"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No dead letters.")))));
}

async function deadLetter(flow, id) {
  const d = await api("/flows/" + encodeURIComponent(flow) + "/dead-letters/" + encodeURIComponent(id));
  const payload = d.envelope ? d.envelope.payload : null;
  // a payload that is not JSON (or too deep to show) comes as text: shown to be fixed
  const shown = d.envelope && d.envelope.payload_raw !== undefined ? d.envelope.payload_raw : pretty(payload);
  const editor = h("textarea", { id: "payload", spellcheck: "false" }, shown);
  const status = h("div", { id: "replay-status" });
  const override = h("input", { type: "checkbox", id: "override" });
  const again = h("input", { type: "checkbox", id: "again" });
  const replay = h("button", { class: "primary", id: "replay", disabled: !d.replayable || sessionRole !== "operator" || null }, "Replay");
  const gate = () => { replay.disabled = !d.replayable || sessionRole !== "operator" ||
    (d.compensated && !override.checked) || (d.replayed && !again.checked); };
  override.addEventListener("change", gate);
  again.addEventListener("change", gate);
  replay.addEventListener("click", async () => {
    const body = { allow_compensated: override.checked, again: again.checked };
    let edited;
    try { edited = JSON.parse(editor.value); } catch (e) { status.replaceChildren(h("div", { class: "error" }, "The payload is not valid JSON: " + e.message)); return; }
    if (JSON.stringify(edited) !== JSON.stringify(payload)) body.payload = edited;
    if (d.compensated && !window.confirm("Execution " + d.execution_id + " was " + d.compensated +
      ". Replaying runs step " + d.step + " again after its saga undid the steps before it. Replay anyway?")) return;
    try {
      const r = await api("/flows/" + encodeURIComponent(flow) + "/dead-letters/" + encodeURIComponent(id) + "/replay", { method: "POST", body });
      status.replaceChildren(h("div", { class: "ok" }, "Replayed: execution ",
        h("a", { href: "#/execution/" + encodeURIComponent(r.replayed[0]) }, r.replayed[0]), " continues at step " + d.step + "."));
      replay.disabled = true;
    } catch (err) { status.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)); }
  });
  const warnings = [];
  if (d.compensated) warnings.push(h("div", { class: "warn", id: "compensated-warning" },
    h("b", {}, "This execution was " + d.compensated.replace("_", " ") + ". "),
    "Its saga undid the steps before " + d.step + " (e.g. a payment refunded). Replaying runs " + d.step +
    " again on top of that. ", h("label", {}, override, " Replay anyway (override)")));
  if (d.replayed) warnings.push(h("div", { class: "warn", id: "replayed-warning" },
    h("b", {}, "Already replayed " + d.replayed + "× "), "(" + d.replays.join(", ") + "). ",
    h("label", {}, again, " Replay once more")));
  if (!d.replayable) warnings.push(h("div", { class: "warn" }, "This dead letter cannot be replayed (a raw record or a failed compensation)."));
  if (sessionRole !== "operator") warnings.push(h("p", { class: "muted" }, "Replaying needs the operator token."));
  setPage("Dead letter " + d.id + " of " + flow,
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "Step"), h("dd", {}, d.step),
        h("dt", {}, "Time"), h("dd", {}, d.time),
        h("dt", {}, "Attempt"), h("dd", {}, d.attempt),
        h("dt", {}, "Error type"), h("dd", {}, d.error_type),
        h("dt", {}, "Error"), h("dd", { class: "err" }, d.error),
        h("dt", {}, "Execution"), h("dd", { class: "mono" }, h("a", { href: "#/execution/" + encodeURIComponent(d.execution_id) }, d.execution_id)),
        h("dt", {}, "Origin"), h("dd", { class: "mono" }, d.origin),
        h("dt", {}, "Compensated"), h("dd", {}, d.compensated || "no"),
        h("dt", {}, "Replayed"), h("dd", {}, d.replayed ? d.replayed + "×" : "no"))),
      h("div", { class: "card" }, h("h3", {}, "Payload (edit before replaying)"), editor, ...warnings,
        h("div", { class: "actions" }, replay), status)),
    d.envelope ? h("div", { class: "card" }, h("details", {}, h("summary", {}, "Whole envelope (steps, saga, meta)"), h("pre", {}, pretty(d.envelope)))) : null,
    d.raw ? h("div", { class: "card" }, h("h3", {}, "Raw record"), h("pre", {}, d.raw)) : null);
  gate();
}

// -- router --------------------------------------------------------------------------

let sessionRole = "";

async function route() {
  if (poller) { clearInterval(poller); clearTimeout(poller); poller = null; }
  if (!token()) { document.getElementById("signout").hidden = true; login(); return; }
  const hash = location.hash.replace(/^#/, "") || "/";
  const path = hash.split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("[data-nav]")) {
    const nav = a.getAttribute("data-nav");
    a.classList.toggle("active", nav === (path[0] || "overview") || (nav === "executions" && path[0] === "execution") || (nav === "dead-letters" && path[0] === "dead-letter"));
  }
  try {
    if (!sessionRole) {
      const who = await api("/whoami");
      sessionRole = who.role;
      document.getElementById("role").textContent = who.role;
      document.getElementById("integration").textContent = who.integration;
      document.getElementById("signout").hidden = false;
    }
    if (!path.length) await overview();
    else if (path[0] === "executions") await executions();
    else if (path[0] === "execution") await execution(path[1]);
    else if (path[0] === "dead-letters") await deadLetters();
    else if (path[0] === "dead-letter") await deadLetter(path[1], path[2]);
    else setPage("Not found", h("p", {}, "No page " + hash));
  } catch (err) {
    if (token()) showError(err);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionRole = "";
    document.getElementById("role").textContent = "";
    location.hash = "#/";
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
