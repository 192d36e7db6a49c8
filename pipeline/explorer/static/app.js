// mathsynth explorer: one page, vanilla JS, state in the URL hash.
// Records are hostile data: nothing from the server is ever assigned to innerHTML;
// every value goes in through textContent (el() below), and KaTeX / highlight.js
// only ever see text nodes.
"use strict";

const PAGE = 50;           // rows per page in the tables
const CELL_CHARS = 120;    // a longer value is cut in the results table
const RICH_FIELDS = ["problem", "solution", "completion", "prompt", "text"];
const ANSWER_FIELDS = ["final_answer", "extracted", "gold"];
const MATH_DELIMITERS = [
  {left: "$$", right: "$$", display: true},
  {left: "\\[", right: "\\]", display: true},
  {left: "\\(", right: "\\)", display: false},
];
const OP_LABELS = {eq: "=", ne: "≠", in: "in", contains: "contains", gt: ">", ge: "≥", lt: "<", le: "≤",
                   is_null: "is null", not_null: "not null"};

// ---------- small helpers ----------

const $ = (id) => document.getElementById(id);

// el("td", {class: "x", title: "t", onclick: f}, child, "text", ...): children are nodes or text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function truncate(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// The compare API gives accuracies in percent and differences in percentage points.
function pct(x) {
  return typeof x === "number" ? x.toFixed(1) + "%" : "—";
}

function points(x) {
  return typeof x === "number" ? (x > 0 ? "+" : "") + x.toFixed(1) + " pt" : "—";
}

// ---------- messages and API ----------

function showMessage(text) {
  $("message-text").textContent = text;
  $("message").hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message-text").textContent = "";
}

class ApiError extends Error {}

// GET a JSON endpoint; an HTTP error shows the server's {"error"} in the message box and throws ApiError.
async function api(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const url = path + (query.toString() ? "?" + query : "");
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    showMessage(`${path}: the server did not answer (${err.message})`);
    throw new ApiError(err.message);
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* a non-JSON answer is reported below */ }
  if (!response.ok || body === null) {
    const why = body && body.error ? body.error : `HTTP ${response.status} without a JSON body`;
    showMessage(`${path} (HTTP ${response.status}): ${why}`);
    throw new ApiError(why);
  }
  return body;
}

// A failure we did not plan for still ends up visible, never as a silent blank page.
window.addEventListener("error", (event) => showMessage(`page error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => {
  if (!(event.reason instanceof ApiError)) showMessage(`page error: ${event.reason}`);
});

// ---------- state in the URL hash ----------

// Keys: tab, ds (dataset), q, f (filters JSON), sort, desc, off, rds + row (record view),
// runs (compare, comma separated), show, bench, coff.
let state = {};
let datasets = [];                 // /api/datasets
const loaded = {};                 // per area: the key last fetched, so a hash change refetches only what changed
const seq = {};                    // per area: a counter, so a slow old answer never overwrites a newer one

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const s = Object.fromEntries(params.entries());
  s.tab = ["browse", "compare", "errors"].includes(s.tab) ? s.tab : "browse";
  try { s.filters = s.f ? JSON.parse(s.f) : []; } catch (err) { s.filters = []; }
  if (!Array.isArray(s.filters)) s.filters = [];
  delete s.f;
  s.off = Math.max(0, parseInt(s.off || "0", 10) || 0);
  s.coff = Math.max(0, parseInt(s.coff || "0", 10) || 0);
  return s;
}

function writeHash(s) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(s)) {
    if (key === "filters") { if (value.length) params.set("f", JSON.stringify(value)); continue; }
    if (value === undefined || value === null || value === "" || (key.endsWith("off") && !value)) continue;
    params.set(key, value);
  }
  return "#" + params.toString();
}

// Change the state: the hash changes, and the hashchange handler redraws what depends on it.
function go(patch) {
  const next = {...state, ...patch};
  const hash = writeHash(next);
  if (hash === location.hash || (hash === "#" && !location.hash)) refresh();
  else location.hash = hash;
}

function dataset(name) {
  return datasets.find((d) => d.name === name);
}

// ---------- sidebar ----------

function renderSidebar() {
  const list = $("datasets");
  list.replaceChildren();
  if (!datasets.length) list.append(el("li", {class: "muted"}, "no datasets"));
  for (const d of datasets) {
    const badge = d.error ? el("span", {class: "badge bad"}, "error") : d.complete ? el("span", {class: "badge ok"}, "complete") : el("span", {class: "badge warn"}, "partial");
    const item = el("li", {class: "dataset" + (d.name === state.ds ? " selected" : ""), "data-name": d.name,
                           onclick: () => selectDataset(d.name)},
      el("div", {class: "name"}, d.name),
      el("div", {class: "meta"}, el("span", {class: "stage"}, d.stage || d.kind || "?"), " ", badge, " ",
         el("span", {class: "count"}, `${(d.records || 0).toLocaleString()} records`)));
    if (d.error) item.append(el("div", {class: "dataset-error error"}, d.error));
    if (d.bad_line_count > 0) {
      const details = el("details", {class: "bad-lines", onclick: (e) => e.stopPropagation()},
        el("summary", {class: "error"}, `${d.bad_line_count} unreadable line${d.bad_line_count === 1 ? "" : "s"}`),
        el("ul", {}, (d.bad_lines || []).map((b) => el("li", {}, `${b.file}:${b.line}: ${b.error}`))));
      item.append(details);
    }
    list.append(item);
  }
}

function selectDataset(name) {
  const tab = state.tab === "compare" ? "browse" : state.tab;
  go({ds: name, tab, q: "", filters: [], sort: "", desc: "", off: 0});
}

// ---------- browse ----------

function renderFilterBuilder() {
  const d = dataset(state.ds);
  const columns = d ? d.columns || [] : [];
  const colSelect = $("filter-column");
  const previous = colSelect.value;
  colSelect.replaceChildren(...columns.map((c) => el("option", {value: c.name}, `${c.name} (${c.type})`)));
  if (columns.some((c) => c.name === previous)) colSelect.value = previous;
  const sortSelect = $("sort");
  sortSelect.replaceChildren(el("option", {value: ""}, "(file order)"),
    ...columns.map((c) => el("option", {value: c.name}, c.name)));
  sortSelect.value = state.sort || "";
  $("desc").checked = !!state.desc;
  $("search").value = state.q || "";
  renderValueInput();
  renderChips();
}

// The value box follows the column and the operator: a select of the known values (with counts)
// when the column has them, nothing for the null tests, else a free text input.
function renderValueInput() {
  const d = dataset(state.ds);
  const column = d && (d.columns || []).find((c) => c.name === $("filter-column").value);
  const op = $("filter-op").value;
  const box = $("filter-value-box");
  let input;
  if (op === "is_null" || op === "not_null") {
    input = el("input", {id: "filter-value", disabled: true, placeholder: "(no value)"});
  } else if (column && column.values && column.values.length && ["eq", "ne", "in"].includes(op)) {
    input = el("select", {id: "filter-value", multiple: op === "in" ? true : null},
      column.values.map(([value, count]) => el("option", {value: JSON.stringify(value)}, `${display(value) || "(null)"} (${count})`)));
  } else {
    const hint = column && column.type === "number" && column.min !== undefined && column.min !== null
      ? `${column.min} … ${column.max}` : (op === "in" ? "a, b, c" : "value");
    input = el("input", {id: "filter-value", placeholder: hint});
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") addFilter(); });
  }
  box.replaceChildren(input);
}

// What the user typed, as the column's type: numbers as numbers, true/false as booleans.
function typed(text, column) {
  const t = text.trim();
  if (column && column.type === "number" && t !== "" && !isNaN(Number(t))) return Number(t);
  if (column && column.type === "bool" && (t === "true" || t === "false")) return t === "true";
  return t;
}

function addFilter() {
  const d = dataset(state.ds);
  const col = $("filter-column").value;
  if (!d || !col) return;
  const column = (d.columns || []).find((c) => c.name === col);
  const op = $("filter-op").value;
  const input = $("filter-value");
  const filter = {col, op};
  if (op === "is_null" || op === "not_null") {
    // no value
  } else if (input.tagName === "SELECT") {
    const picked = [...input.selectedOptions].map((o) => JSON.parse(o.value));
    if (!picked.length) return;
    filter.value = op === "in" ? picked : picked[0];
  } else if (op === "in") {
    filter.value = input.value.split(",").map((v) => typed(v, column)).filter((v) => v !== "");
  } else {
    filter.value = typed(input.value, column);
  }
  go({filters: [...state.filters, filter], off: 0});
}

function renderChips() {
  const box = $("chips");
  box.replaceChildren(...state.filters.map((f, i) => el("span", {class: "chip", "data-col": f.col},
    `${f.col} ${OP_LABELS[f.op] || f.op}${"value" in f ? " " + display(f.value) : ""}`,
    el("button", {title: "remove this filter", onclick: () => go({filters: state.filters.filter((_, j) => j !== i), off: 0})}, "×"))));
}

function recordsParams() {
  return {dataset: state.ds, q: state.q, filters: state.filters.length ? JSON.stringify(state.filters) : "",
          sort: state.sort, desc: state.desc ? 1 : ""};
}

async function loadRecords() {
  const params = {...recordsParams(), offset: state.off, limit: PAGE};
  const key = JSON.stringify(params);
  const exportQuery = new URLSearchParams(Object.entries(recordsParams()).filter(([, v]) => v !== "" && v !== undefined));
  $("export").href = "/api/export?" + exportQuery;
  if (loaded.records === key) return;
  loaded.records = key;
  const mine = seq.records = (seq.records || 0) + 1;
  $("results").classList.add("loading");
  let body;
  try {
    body = await api("/api/records", params);
  } catch (err) {
    loaded.records = null;   // a retry (same hash) asks again
    $("results").classList.remove("loading");
    $("total").textContent = "no rows (see the message above)";
    return;
  }
  if (mine !== seq.records) return;
  $("results").classList.remove("loading");
  renderResults(body);
}

function renderResults(body) {
  const columns = body.columns || [];
  $("results").tHead.replaceChildren(el("tr", {}, el("th", {}, "#"), columns.map((c) => el("th", {
    class: c === state.sort ? "sorted" : null, title: "sort by " + c,
    onclick: () => go({sort: c, desc: c === state.sort && !state.desc ? 1 : "", off: 0})}, c))));
  // "#" is the position in the result; the row id (file and line packed) stays in data-row.
  const rows = (body.rows || []).map((row, i) => el("tr", {class: "clickable", "data-row": row._row,
      onclick: () => go({rds: state.ds, row: row._row})},
    el("td", {class: "rownum"}, state.off + i + 1),
    columns.map((c) => {
      const text = display(row[c]);
      return el("td", {"data-col": c, title: text.length > CELL_CHARS ? truncate(text, 2000) : null, class: typeof row[c] === "number" ? "num" : null},
                truncate(text, CELL_CHARS));
    })));
  $("results").tBodies[0].replaceChildren(...rows);
  const total = body.total || 0;
  const first = total ? state.off + 1 : 0;
  const last = Math.min(state.off + (body.rows || []).length, total);
  const ms = typeof body.elapsed_ms === "number" ? ` · ${body.elapsed_ms.toFixed(1)} ms` : "";
  $("total").textContent = `rows ${first}-${last} of ${total.toLocaleString()}${ms}`;
  // What the shown rows answer, for whoever waits on them (the browser tests).
  Object.assign($("total").dataset, {total, q: state.q || "", filters: JSON.stringify(state.filters)});
  $("prev").disabled = state.off <= 0;
  $("next").disabled = state.off + PAGE >= total;
}

// ---------- record view ----------

// Text with LaTeX and ```lang fences: fences become highlighted code blocks, the rest goes through
// KaTeX's auto-render, which only ever reads text nodes (so markup in a record stays text).
function rich(text) {
  const box = el("div", {class: "rich"});
  const fence = /```([\w+#.-]*)[^\n]*\n([\s\S]*?)```/g;
  let at = 0;
  for (const match of String(text).matchAll(fence)) {
    if (match.index > at) box.append(mathText(text.slice(at, match.index)));
    box.append(codeBlock(match[2], match[1]));
    at = match.index + match[0].length;
  }
  if (at < text.length) box.append(mathText(text.slice(at)));
  return box;
}

// Inline $..$ needs a non-space right after the opening dollar and no digit right after the closing one
// (pandoc's rule, less its "no space before the closing dollar", which real records break), so
// "$80,000 and then $50,000" stays prose. It is rendered here with katex.render; the other delimiters
// go through auto-render. Both only ever read text, never markup.
const INLINE_DOLLAR = /(?<![\\$])\$(?![\s$])((?:\\.|[^$\\])+?)\$(?![\d$])/g;

function mathText(text) {
  const node = el("div", {class: "text"});
  let at = 0;
  for (const match of text.matchAll(INLINE_DOLLAR)) {
    if (match.index > at) node.append(text.slice(at, match.index));
    node.append(inlineMath(match[1], match[0]));
    at = match.index + match[0].length;
  }
  if (at < text.length) node.append(text.slice(at));
  if (window.renderMathInElement) {
    try {
      renderMathInElement(node, {delimiters: MATH_DELIMITERS, throwOnError: false, trust: false, ignoredClasses: ["katex"]});
    } catch (err) { /* the text stays as it was */ }
  }
  return node;
}

function inlineMath(tex, raw) {
  const span = el("span", {class: "math"});
  if (!window.katex) { span.textContent = raw; return span; }
  try { katex.render(tex, span, {throwOnError: false, trust: false}); } catch (err) { span.textContent = raw; }
  return span;
}

function codeBlock(code, lang) {
  const language = lang && window.hljs && hljs.getLanguage(lang) ? lang : (lang ? "plaintext" : "python");
  const block = el("code", {class: "language-" + language}, code);
  if (window.hljs) {
    try { hljs.highlightElement(block); } catch (err) { /* unhighlighted code is still readable */ }
  }
  return el("pre", {class: "code"}, block);
}

// A short answer is LaTeX without delimiters ("3\sqrt{13}"): rendered as math, the raw text in the tooltip.
// In a table cell a long answer (a model's runaway output) is cut, as plain text.
function answer(value, limit) {
  const text = display(value);
  const node = el("span", {class: "answer", title: truncate(text, 2000)});
  if (limit && text.length > limit) { node.textContent = truncate(text, limit); return node; }
  if (window.katex && typeof value === "string") {
    try { katex.render(text, node, {throwOnError: true, trust: false}); return node; } catch (err) { /* below */ }
  }
  node.textContent = text;
  return node;
}

function field(name, ...content) {
  return el("div", {class: "field", "data-field": name}, el("div", {class: "label"}, name), content);
}

function messagesView(messages) {
  return messages.map((m) => el("div", {class: "chat " + display(m && m.role)},
    el("div", {class: "role"}, display(m && m.role)),
    typeof (m && m.content) === "string" ? rich(m.content) : el("pre", {}, display(m && m.content))));
}

function renderRecord(body) {
  const record = body.record || {};
  const view = $("record");
  $("record-title").replaceChildren(el("b", {}, body.dataset), ` row ${body.row}`,
    el("span", {class: "muted"}, ` · ${body.file || ""}:${body.line || ""}`), record.id ? el("span", {class: "muted"}, ` · id ${record.id}`) : null);
  const parts = [];
  const verdict = record.verdict !== undefined ? record.verdict : (record.correct !== undefined ? (record.correct ? "correct" : "wrong") : undefined);
  if (verdict !== undefined) {
    const good = record.correct === true || verdict === "match";
    parts.push(field("verdict", el("span", {class: "badge " + (good ? "ok" : "bad")}, display(verdict)),
      record.correct !== undefined ? el("span", {class: "muted"}, ` correct: ${record.correct}`) : null));
  }
  if (record.reject_reason) parts.push(field("reject_reason", el("span", {class: "badge bad"}, display(record.reject_reason))));
  for (const name of ANSWER_FIELDS) {
    if (record[name] !== undefined && record[name] !== null) parts.push(field(name, answer(record[name])));
  }
  for (const name of RICH_FIELDS) {
    const value = record[name];
    if (value === undefined || value === null || value === "") continue;
    if (typeof value === "string") parts.push(field(name, rich(value)));
    else if (Array.isArray(value)) parts.push(field(name, messagesView(value)));   // a chat prompt
    else parts.push(field(name, el("pre", {}, JSON.stringify(value, null, 2))));
  }
  if (record.code) parts.push(field("code", codeBlock(display(record.code), "python")));
  if (record.filter_details && Object.keys(record.filter_details).length) {
    parts.push(field("filter_details", el("pre", {class: "json"}, JSON.stringify(record.filter_details, null, 2))));
  }
  if (Array.isArray(record.executions) && record.executions.length) {
    parts.push(field("executions", record.executions.map((x, i) => el("div", {class: "execution"},
      el("div", {class: "muted"}, `#${i + 1} ${display(x.status)}`),
      codeBlock(display(x.code), "python"),
      x.stdout ? el("pre", {class: "output"}, display(x.stdout)) : null,
      x.output ? el("pre", {class: "output"}, display(x.output)) : null,
      x.stderr ? el("pre", {class: "output error"}, display(x.stderr)) : null,
      x.error ? el("pre", {class: "output error"}, display(x.error)) : null))));
  }
  if (Array.isArray(record.messages)) parts.push(field("messages", messagesView(record.messages)));
  parts.push(el("details", {class: "raw"}, el("summary", {}, "Raw JSON"), el("pre", {class: "json"}, JSON.stringify(record, null, 2))));
  view.replaceChildren(...parts);
}

function lineageItem(item) {
  const clickable = item.row !== null && item.row !== undefined;
  return el("li", {class: "lineage-item" + (clickable ? " clickable" : ""), "data-dataset": item.dataset, "data-row": item.row,
      onclick: clickable ? () => go({ds: item.dataset, rds: item.dataset, row: item.row, q: "", filters: [], sort: "", desc: "", off: 0}) : null},
    el("span", {class: "relation"}, display(item.relation)), " ",
    item.dataset ? el("b", {}, display(item.dataset)) : null, clickable ? ` #${item.row}` : "",
    item.summary ? el("div", {class: "summary"}, truncate(display(item.summary), 300)) : null);
}

function renderLineage(body) {
  for (const [id, items] of [["lineage-back", body.back], ["lineage-forward", body.forward]]) {
    const list = (items || []).map(lineageItem);
    $(id).replaceChildren(...(list.length ? list : [el("li", {class: "muted"}, "nothing found")]));
  }
}

async function loadRecord() {
  const open = state.rds && state.row !== undefined && state.row !== "";
  $("record-panel").hidden = !open;
  if (!open) { loaded.record = null; return; }
  const key = `${state.rds}\n${state.row}`;
  if (loaded.record === key) return;
  loaded.record = key;
  const mine = seq.record = (seq.record || 0) + 1;
  $("record").replaceChildren(el("p", {class: "muted"}, "loading…"));
  $("lineage-back").replaceChildren();
  $("lineage-forward").replaceChildren();
  const params = {dataset: state.rds, row: state.row};
  const [record, lineage] = await Promise.allSettled([api("/api/record", params), api("/api/lineage", params)]);
  if (mine !== seq.record) return;
  if (record.status === "fulfilled") renderRecord(record.value);
  else $("record").replaceChildren(el("p", {class: "error"}, "this record could not be read: " + record.reason.message));
  if (lineage.status === "fulfilled") renderLineage(lineage.value);
  $("record-panel").scrollTop = 0;
}

// ---------- compare ----------

function evalDatasets() {
  return datasets.filter((d) => d.kind === "eval" && !d.error);
}

function selectedRuns() {
  return (state.runs || "").split(",").filter(Boolean);
}

function renderCompareControls() {
  const runs = selectedRuns();
  const box = $("compare-runs");
  const options = evalDatasets().map((d) => el("label", {class: "run"},
    el("input", {type: "checkbox", value: d.name, checked: runs.includes(d.name),
                 onchange: () => {
                   const picked = [...box.querySelectorAll("input:checked")].map((i) => i.value);
                   go({runs: picked.join(","), coff: 0});
                 }}), " " + d.name));
  box.replaceChildren(el("legend", {}, "eval runs (pick 2+)"), ...(options.length ? options : [el("span", {class: "muted"}, "no eval datasets")]));
  $("compare-show").value = state.show || "all";
}

async function loadCompare() {
  const runs = selectedRuns();
  if (runs.length < 2) {
    loaded.compare = null;
    $("compare-summary").tHead.replaceChildren();
    $("compare-summary").tBodies[0].replaceChildren(el("tr", {}, el("td", {class: "muted"}, "pick two or more eval runs")));
    $("compare-problems").tHead.replaceChildren();
    $("compare-problems").tBodies[0].replaceChildren();
    $("compare-total").textContent = "";
    return;
  }
  const params = {datasets: runs.join(","), show: state.show || "all", benchmark: state.bench || "", offset: state.coff, limit: PAGE};
  const key = JSON.stringify(params);
  if (loaded.compare === key) return;
  loaded.compare = key;
  const mine = seq.compare = (seq.compare || 0) + 1;
  let body;
  try { body = await api("/api/compare", params); } catch (err) { loaded.compare = null; return; }
  if (mine !== seq.compare) return;
  renderCompare(body);
}

const benchmarkNames = {};   // runs -> the benchmarks they share

function renderCompare(body) {
  const runs = body.runs || [];
  const summary = body.summary || [];
  // The benchmark choices: the API's list of every benchmark the runs hold (else those seen so far).
  const runsKey = runs.join(",");
  const seen = summary.map((s) => s.benchmark).filter(Boolean);
  benchmarkNames[runsKey] = [...new Set([...(body.benchmarks || []), ...(benchmarkNames[runsKey] || []), ...seen, state.bench].filter(Boolean))].sort();
  $("compare-benchmark").replaceChildren(el("option", {value: ""}, "all"),
    ...benchmarkNames[runsKey].map((n) => el("option", {value: n}, n)));
  $("compare-benchmark").value = state.bench || "";

  const sum = $("compare-summary");
  const later = runs.slice(1);   // diff: each later run against the first
  sum.tHead.replaceChildren(el("tr", {}, el("th", {}, "benchmark"), el("th", {}, "subject"), el("th", {}, "level"), el("th", {}, "problems"),
    runs.map((r) => el("th", {}, `accuracy ${r}`)), runs.map((r) => el("th", {}, `pass@k ${r}`)),
    later.map((r) => el("th", {}, `diff ${r}`))));
  sum.tBodies[0].replaceChildren(...summary.map((s) => {
    const whole = (s.subject === null || s.subject === undefined) && (s.level === null || s.level === undefined);
    const diffs = Array.isArray(s.diff) ? s.diff : [s.diff];
    return el("tr", {"data-benchmark": s.benchmark, class: whole ? "benchmark-total" : "subgroup"},
      el("td", {}, display(s.benchmark)), el("td", {}, whole ? "(all)" : display(s.subject) || "—"), el("td", {}, whole ? "" : display(s.level) || "—"),
      el("td", {class: "num"}, display(s.problems)),
      (s.accuracy || []).map((a) => el("td", {class: "num"}, pct(a))),
      (s.pass_at_k || []).map((a) => el("td", {class: "num"}, pct(a))),
      diffs.map((d) => el("td", {class: "num " + (d > 0 ? "up" : d < 0 ? "down" : "")}, points(d))));
  }));

  const probs = $("compare-problems");
  probs.tHead.replaceChildren(el("tr", {}, el("th", {}, "problem"), el("th", {}, "gold"),
    runs.map((r) => el("th", {}, r))));
  probs.tBodies[0].replaceChildren(...(body.problems || []).map((p) => el("tr", {"data-problem": p.problem_id},
    el("td", {}, display(p.problem_id), el("div", {class: "muted"}, [p.subject, p.level].filter((x) => x !== null && x !== undefined).join(" · "))),
    el("td", {}, answer(p.gold, 60)),
    (p.runs || []).map((r, i) => {
      const good = r.majority_correct;
      const clickable = r.row !== null && r.row !== undefined;
      return el("td", {class: "run-cell" + (clickable ? " clickable" : ""), "data-run": runs[i], "data-row": r.row,
          onclick: clickable ? () => go({rds: runs[i], row: r.row}) : null},
        el("span", {class: good ? "tick ok" : "tick bad"}, good ? "✓" : "✗"), " ",
        r.majority !== null && r.majority !== undefined ? answer(r.majority, 60) : el("span", {class: "muted"}, "no answer"),
        el("div", {class: "muted counts"}, `${r.correct || 0} right · ${r.wrong || 0} wrong · ${r.no_answer || 0} none`));
    }))));
  const total = body.total || 0;
  const count = (body.problems || []).length;
  $("compare-total").textContent = `problems ${total ? state.coff + 1 : 0}-${state.coff + count} of ${total}`;
  Object.assign($("compare-total").dataset, {total, show: state.show || "all", bench: state.bench || ""});
  $("compare-prev").disabled = state.coff <= 0;
  $("compare-next").disabled = state.coff + PAGE >= total;
}

// ---------- errors ----------

function renderErrorsControls() {
  const select = $("errors-dataset");
  select.replaceChildren(el("option", {value: ""}, "(pick a dataset)"), ...datasets.map((d) => el("option", {value: d.name}, d.name)));
  select.value = state.ds || "";
}

async function loadErrors() {
  if (!state.ds) {
    $("error-groups").replaceChildren(el("p", {class: "muted"}, "pick a dataset"));
    $("error-clusters").replaceChildren();
    return;
  }
  if (loaded.errors === state.ds) return;
  loaded.errors = state.ds;
  const mine = seq.errors = (seq.errors || 0) + 1;
  $("error-groups").replaceChildren(el("p", {class: "muted"}, "loading…"));
  $("error-clusters").replaceChildren();
  let body;
  try { body = await api("/api/errors", {dataset: state.ds}); } catch (err) {
    loaded.errors = null;
    $("error-groups").replaceChildren();
    return;
  }
  if (mine !== seq.errors) return;
  renderErrors(body, state.ds);
}

function examples(list, name) {
  return el("ul", {class: "examples"}, (list || []).map((x) => el("li", {class: "clickable", "data-row": x.row,
    onclick: () => go({rds: name, row: x.row})}, el("span", {class: "muted"}, `#${x.row} `), truncate(display(x.summary), 200))));
}

function renderErrors(body, name) {
  $("errors-kind").textContent = body.kind ? `kind: ${body.kind}` : "";
  const groups = body.groups || [];
  const max = Math.max(1, ...groups.map((g) => g.count || 0));
  $("error-groups").replaceChildren(...(groups.length ? groups.map((g) => el("div", {class: "group", "data-name": g.name},
    el("div", {class: "bar-row"},
      el("span", {class: "bar-name"}, display(g.name)),
      el("span", {class: "bar-track"}, el("span", {class: "bar", style: `width: ${(100 * (g.count || 0) / max).toFixed(1)}%`})),
      el("span", {class: "bar-count"}, display(g.count))),
    el("details", {}, el("summary", {}, `examples (${(g.examples || []).length})`), examples(g.examples, name))))
    : [el("p", {class: "muted"}, "no error groups: nothing failed or was rejected")]));
  const clusters = body.clusters || [];
  $("error-clusters-title").hidden = !clusters.length;
  $("error-clusters").replaceChildren(...clusters.map((c, i) => el("div", {class: "cluster"},
    el("div", {}, el("b", {}, `cluster ${i + 1}`), ` · ${c.size} similar`), examples(c.examples, name))));
}

// ---------- wiring ----------

function refresh() {
  state = readHash();
  clearMessageIfStale();
  for (const tab of ["browse", "compare", "errors"]) {
    $("tab-" + tab).classList.toggle("active", tab === state.tab);
    $("view-" + tab).hidden = tab !== state.tab;
  }
  $("current-dataset").textContent = state.ds && state.tab !== "compare" ? state.ds : "";
  renderSidebar();
  if (state.tab === "browse") {
    renderFilterBuilder();
    if (state.ds) loadRecords();
    else { $("total").textContent = "pick a dataset on the left"; $("results").tHead.replaceChildren(); $("results").tBodies[0].replaceChildren(); }
  } else if (state.tab === "compare") {
    renderCompareControls();
    loadCompare();
  } else {
    renderErrorsControls();
    loadErrors();
  }
  loadRecord();
}

// A message belongs to the view that caused it: moving to another view clears it.
let lastView = null;
function clearMessageIfStale() {
  const view = JSON.stringify([state.tab, state.ds, state.q, state.filters, state.rds, state.row, state.runs]);
  if (lastView !== null && view !== lastView) clearMessage();
  lastView = view;
}

function wire() {
  for (const tab of ["browse", "compare", "errors"]) $("tab-" + tab).addEventListener("click", () => go({tab}));
  $("message-close").addEventListener("click", clearMessage);
  $("search").addEventListener("keydown", (e) => { if (e.key === "Enter") go({q: $("search").value, off: 0}); });
  $("search").addEventListener("search", () => { if ($("search").value !== (state.q || "")) go({q: $("search").value, off: 0}); });
  $("filter-column").addEventListener("change", renderValueInput);
  $("filter-op").addEventListener("change", renderValueInput);
  $("filter-add").addEventListener("click", addFilter);
  $("sort").addEventListener("change", () => go({sort: $("sort").value, off: 0}));
  $("desc").addEventListener("change", () => go({desc: $("desc").checked ? 1 : "", off: 0}));
  $("prev").addEventListener("click", () => go({off: Math.max(0, state.off - PAGE)}));
  $("next").addEventListener("click", () => go({off: state.off + PAGE}));
  $("compare-show").addEventListener("change", () => go({show: $("compare-show").value, coff: 0}));
  $("compare-benchmark").addEventListener("change", () => go({bench: $("compare-benchmark").value, coff: 0}));
  $("compare-prev").addEventListener("click", () => go({coff: Math.max(0, state.coff - PAGE)}));
  $("compare-next").addEventListener("click", () => go({coff: state.coff + PAGE}));
  $("errors-dataset").addEventListener("change", () => go({ds: $("errors-dataset").value}));
  $("record-close").addEventListener("click", () => go({rds: "", row: ""}));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.rds) go({rds: "", row: ""}); });
  window.addEventListener("hashchange", refresh);
}

async function start() {
  wire();
  try {
    datasets = (await api("/api/datasets")).datasets || [];
  } catch (err) {
    datasets = [];
  }
  document.body.dataset.ready = "1";   // tests wait for this
  refresh();
}

start();
