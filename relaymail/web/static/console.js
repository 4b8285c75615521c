// relaymail console: the helpers every page uses (the pages are in the other scripts,
// main.js starts the one the server named).  Data from mail (addresses, subjects,
// replies) only ever goes into textContent, marked translate="no".
"use strict";
const C = JSON.parse(document.body.dataset.console);
const LOCALE = C.lang === "zh" ? "zh-CN" : "en-GB";
const PAGES = {};
const content = document.getElementById("content");
// Pages open without a session (no CSRF token to fetch, a 401 is not a redirect).
const OPEN_PAGES = ["login", "setup", "register"];
let csrf = null;

// A catalogue entry with {name} placeholders filled in; the key itself when it is missing.
function t(key, params) {
  const text = C.t[key] === undefined ? key : C.t[key];
  return text.replace(/\{(\w+)\}/g, (whole, name) => (params && params[name] !== undefined ? String(params[name]) : whole));
}
function has(key) { return C.t[key] !== undefined; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

function setAttributes(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Mail data and other values that are not words: never translated, never markup.
function data(text, attrs) { return el("span", { translate: "no", class: "data", ...(attrs || {}) }, text === null || text === undefined ? "" : String(text)); }

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.className = isError ? "error" : "ok";
}

// An API error in the reader's language: its message code when the catalogue knows it.
class ApiError extends Error {
  constructor(body, status) {
    super(body.error || String(status));
    this.body = body;
    this.status = status;
  }
}

function errorText(body) {
  if (body && body.code && has("err_" + body.code)) {
    const params = { ...(body.params || {}) };
    for (const name of ["field", "state"]) {
      if (params[name] && has("field_" + params[name])) params[name] = t("field_" + params[name]);
      else if (params[name] && has("state_" + params[name])) params[name] = t("state_" + params[name]);
    }
    if (params.problem_code && has("problem_" + params.problem_code)) params.problem = t("problem_" + params.problem_code);
    return t("err_" + body.code, params);
  }
  return t("error_prefix") + (body && body.error ? body.error : "");
}

function failure(e) {
  if (e instanceof ApiError) return errorText(e.body);
  return t("error_prefix") + (e && e.message ? e.message : String(e));
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !OPEN_PAGES.includes(C.page)) { location.href = "/login"; throw new Error("login"); }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(answer, response.status);
  return answer;
}

// A table; on a phone each row becomes a card (the CSS uses data-label).
function table(headers, rows, attrs) {
  if (!rows.length) return el("p", { class: "empty" }, t("none"));
  return el("div", { class: "scroll" }, el("table", { class: "cards-on-phone", ...(attrs || {}) },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell, i) => el("td", { "data-label": headers[i] }, cell)))))));
}

function field(label, control, hint) {
  return el("label", {}, el("span", {}, label), control, hint ? el("small", { class: "hint" }, hint) : null);
}
function input(name, attrs) { return el("input", { name, id: "f-" + name, ...(attrs || {}) }); }
function value(name) { const node = document.getElementById("f-" + name); return node ? node.value.trim() : ""; }
function select(id, options, current) {
  return el("select", { id: "f-" + id, name: id },
    options.map(([v, label]) => el("option", { value: v, selected: v === current }, label)));
}

// A button whose action runs with the button disabled and a spinner; the outcome (its
// message or the translated error) goes to the message line.
function button(label, action, attrs) {
  const node = el("button", { type: "button", ...(attrs || {}) }, label);
  node.addEventListener("click", (event) => { event.preventDefault(); run(node, action); });
  return node;
}

async function run(node, action) {
  if (node.disabled) return;
  node.disabled = true;
  node.classList.add("busy");
  node.setAttribute("aria-busy", "true");
  try {
    const done = await action();
    if (typeof done === "string") say(done);
  } catch (e) {
    if (e.message !== "login") say(failure(e), true);
  } finally {
    node.disabled = false;
    node.classList.remove("busy");
    node.removeAttribute("aria-busy");
  }
}

// A form whose submit runs like a button's action (its submit button is the one disabled).
function onSubmit(form, action) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    run(form.querySelector("button[type=submit]"), action);
  });
  return form;
}

function guarded(action) {
  return async (...args) => { try { await action(...args); } catch (e) { if (e.message !== "login") say(failure(e), true); } };
}

// Times: local, to the second, in the reader's convention; "" for none.
function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(LOCALE, { year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}
function timeCell(iso) { return el("time", { datetime: iso || "", translate: "no" }, when(iso)); }

function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  if (s < 120) return t("dur_s", { n: s });
  if (s < 7200) return t("dur_min", { n: Math.round(s / 60) });
  if (s < 172800) return t("dur_h", { n: Math.round(s / 3600) });
  return t("dur_d", { n: Math.round(s / 86400) });
}

function stateLabel(state) { return el("span", { class: "state state-" + state }, has("state_" + state) ? t("state_" + state) : state); }

// A queue ID, linked to its page (details and history timeline).
function qidLink(qid) { return el("a", { href: "/queue?id=" + encodeURIComponent(qid), class: "qid", translate: "no" }, qid); }

// Calls ``load`` every ``seconds`` while the box is ticked and the page is visible.
function autoRefresh(load, seconds) {
  const box = el("input", { type: "checkbox", id: "f-auto", checked: true });
  const timer = setInterval(() => { if (box.checked && !document.hidden) load(); }, seconds * 1000);
  window.addEventListener("pagehide", () => clearInterval(timer));
  return el("label", { class: "check auto" }, box, t("auto_refresh", { n: seconds }));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // no clipboard permission (plain HTTP on another host): select it instead
    const area = el("textarea", { class: "offscreen", readonly: true }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  return t("copied");
}

// Previous, "first–last of total", next: a paged list; ``go(offset)`` loads that page.
function pager(box, offset, shown, total, size, go) {
  const last = Math.min(total, offset + shown);
  box.replaceChildren(
    button(t("previous"), async () => { await go(Math.max(0, offset - size)); return null; }, { id: "prev", class: "small", disabled: offset === 0 }),
    el("span", { id: "range" }, t("rows_of", { first: total ? offset + 1 : 0, last, total })),
    button(t("next"), async () => { await go(offset + size); return null; }, { id: "next", class: "small", disabled: last >= total }));
}

// Query parameters without the empty ones.
function searchQuery(values) {
  const query = new URLSearchParams();
  for (const [key, v] of Object.entries(values)) if (v !== "" && v !== null && v !== undefined) query.set(key, v);
  return query;
}

// An area this relay was built without (its API answers 404 with no message code): says
// so on the page, instead of an error.
function notHere(e, key) {
  if (!(e instanceof ApiError) || e.status !== 404 || e.body.code) throw e;
  content.replaceChildren(el("p", { class: "hint", id: "not-here" }, t(key)));
}

// Is this console page (and its area) available here, to this caller?
function hasPage(name) { return (C.pages || []).includes(name); }
// An account user (role "user"): their own mail only, none of the relay's settings.
function isUser() { return C.role === "user"; }

// A secret shown once (a password, an API key, an invitation), with a copy button, in
// ``box`` until the next action (``forget``).
function onceBox(box, label, secret, extra) {
  box.hidden = false;
  box.replaceChildren();
  append(box, [el("p", {}, label), el("pre", { translate: "no", id: "once-value" }, secret),
    button(t("copy"), async () => copyText(secret), { class: "small", id: "copy-secret" }), extra]);
}
function forgetBox(box) { box.hidden = true; box.replaceChildren(); }

// Whole numbers for quotas (empty: none) and comma-separated domains, as the API takes them.
function quotaValue(text) { const n = Number(String(text).trim()); return String(text).trim() && n > 0 ? n : null; }
function domainList(text) { return String(text).split(",").map((x) => x.trim()).filter(Boolean); }

// The in-place editors of a row's limits (quotas and sender domains), and their values.
function limitEditors(row) {
  const editors = {
    hourly: el("input", { type: "number", min: 1, value: row.hourly_quota ?? "", class: "edit-hourly", "aria-label": t("hourly_quota") }),
    daily: el("input", { type: "number", min: 1, value: row.daily_quota ?? "", class: "edit-daily", "aria-label": t("daily_quota") }),
    domains: el("input", { value: (row.allowed_sender_domains || []).join(", "), class: "edit-domains", "aria-label": t("sender_domains") }),
  };
  editors.values = () => ({ hourly_quota: quotaValue(editors.hourly.value), daily_quota: quotaValue(editors.daily.value),
    allowed_sender_domains: domainList(editors.domains.value) });
  return editors;
}

// The create form's limit fields (ids f-hourly_quota, f-daily_quota, f-domains), and their values.
function limitFields(domainsHint) {
  return [field(t("hourly_quota"), input("hourly_quota", { type: "number", min: 1 })),
    field(t("daily_quota"), input("daily_quota", { type: "number", min: 1 })),
    field(t("sender_domains"), input("domains"), domainsHint || t("sender_domains_hint"))];
}
function limitValues() {
  return { hourly_quota: quotaValue(value("hourly_quota")), daily_quota: quotaValue(value("daily_quota")),
    allowed_sender_domains: domainList(value("domains")) };
}
