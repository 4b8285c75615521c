// relaymail console: fills the server-rendered shell from the JSON API.
// Data from mail (addresses, subjects, replies) only ever goes into textContent.
"use strict";
const C = JSON.parse(document.body.dataset.console);
const t = (key) => C.t[key] || key;
const content = document.getElementById("content");
let csrf = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.className = isError ? "error" : "ok";
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && C.page !== "login") { location.href = "/login"; throw new Error("login"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status);
  return data;
}

function table(headers, rows) {
  if (!rows.length) return el("p", { class: "empty" }, t("none"));
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell)))))));
}

function field(label, input) { return el("label", {}, el("span", {}, label), input); }
function input(name, attrs) { return el("input", { name, id: "f-" + name, ...(attrs || {}) }); }
function button(label, onclick, attrs) { return el("button", { type: "button", onclick, ...(attrs || {}) }, label); }
function value(name) { return document.getElementById("f-" + name).value.trim(); }
function guarded(action) {
  return async (...args) => { try { await action(...args); } catch (e) { if (e.message !== "login") say(t("error") + ": " + e.message, true); } };
}

// ---------------------------------------------------------------- pages

async function login() {
  const form = el("form", { id: "login" },
    field(t("username"), input("username", { autocomplete: "username", value: "admin" })),
    field(t("password"), input("password", { type: "password", autocomplete: "current-password" })),
    el("button", { type: "submit" }, t("login")));
  form.addEventListener("submit", guarded(async (event) => {
    event.preventDefault();
    await api("POST", "/login", { username: value("username"), password: document.getElementById("f-password").value });
    location.href = "/";
  }));
  content.append(form);
}

async function dashboard() {
  const [health, stats, status] = await Promise.all([
    api("GET", "/health"), api("GET", "/api/mail-logs/stats?hours=24"), api("GET", "/api/relay/status")]);
  const d = health.details;
  content.append(el("div", { class: "cards" },
    [[t("status"), health.status], [t("queued"), d.queued_emails], [t("held"), d.held_emails],
     [t("failed_count"), d.failed_emails], [t("processed"), d.total_emails_processed],
     [t("success_rate"), d.success_rate + " %"], [t("disk"), d.disk_space_available_mb]]
      .map(([label, v]) => el("div", { class: "card", id: "card-" + label }, el("small", {}, label), el("b", {}, v)))));
  const peak = Math.max(1, ...stats.per_hour.map((h) => h.received + h.sent));
  content.append(el("h2", {}, t("per_hour")), el("div", { class: "chart", id: "chart" },
    stats.per_hour.map((h) => el("div", { class: "bar", title: h.hour + ": " + h.sent + " " + t("sent"),
      style: "height:" + Math.round(100 * h.sent / peak) + "%" }))));
  content.append(el("h2", {}, t("upstreams")), table([t("host"), t("status"), t("reply")],
    status.upstreams.map((u) => [u.upstream, u.down ? t("down") : t("up"), u.last_error || ""])));
}

async function relay() {
  const config = await api("GET", "/api/relay/config");
  const presets = el("select", { id: "f-preset", name: "preset" }, el("option", { value: "" }, t("custom")),
    C.presets.map((p) => el("option", { value: p.name, selected: p.name === config.preset }, p.label)));
  const tls = el("select", { id: "f-tls", name: "tls" },
    ["starttls", "implicit", "opportunistic", "none"].map((m) => el("option", { value: m, selected: m === (config.tls || "starttls") }, m)));
  const o = config.oauth2 || {};
  const choice = (id, options, current) => el("select", { id: "f-" + id, name: id },
    options.map(([v, label]) => el("option", { value: v, selected: v === current }, label)));
  const auth = choice("auth", [["password", t("auth_password")], ["oauth2", t("auth_oauth2")]],
    config.oauth2 ? "oauth2" : "password");
  const mechanism = choice("mechanism", [["XOAUTH2", "XOAUTH2"], ["OAUTHBEARER", "OAUTHBEARER"]], o.mechanism || "XOAUTH2");
  const grant = choice("grant", [["refresh_token", t("grant_user")], ["client_credentials", t("grant_app")]], o.grant || "refresh_token");
  const note = el("p", { id: "oauth2-note", class: "hint" });
  const oauth2 = el("fieldset", { id: "oauth2-fields" }, el("legend", {}, "OAuth2"),
    field(t("client_id"), input("client_id", { value: o.client_id || "", autocomplete: "off" })),
    field(t("tenant"), input("tenant", { value: o.tenant || "", autocomplete: "off" })),
    field(t("token_url"), input("token_url", { value: o.token_url || "", autocomplete: "off" })),
    field(t("client_secret"), input("client_secret", { type: "password", autocomplete: "new-password",
      placeholder: o.client_secret_set ? t("password_keep") : "" })),
    field(t("grant"), grant), field(t("mechanism"), mechanism), note);
  const password = field(t("password"), input("password", { type: "password", autocomplete: "new-password",
    placeholder: config.password ? t("password_keep") : "" }));
  const showAuth = () => {
    const p = C.presets.find((x) => x.name === presets.value);
    const isOAuth2 = auth.value === "oauth2";
    oauth2.style.display = isOAuth2 ? "" : "none";  // the stylesheet styles labels' display
    password.style.display = isOAuth2 ? "none" : "";
    note.textContent = (p && p.auth_note ? p.auth_note + ". " : "") + t("oauth2_hint");
  };
  presets.addEventListener("change", () => {
    const p = C.presets.find((x) => x.name === presets.value);
    if (!p) return;
    document.getElementById("f-host").value = p.host;
    document.getElementById("f-port").value = p.port;
    tls.value = p.tls;
    if (p.oauth2) auth.value = "oauth2";
    showAuth();
  });
  auth.addEventListener("change", showAuth);
  const tlsHint = el("p", { id: "tls-hint", class: "hint" });
  // Credentials go only to a verified server (the API refuses the rest): with a username,
  // "opportunistic" and "none" are not offered.
  const syncTls = () => {
    const credentials = Boolean(value("username"));
    for (const option of tls.options) {
      if (option.value === "opportunistic" || option.value === "none") option.disabled = credentials;
    }
    if (credentials && tls.selectedOptions[0] && tls.selectedOptions[0].disabled) tls.value = "starttls";
    tlsHint.textContent = credentials ? t("tls_verified_only") : "";
  };
  const steps = el("div", { id: "steps" });
  const form = () => {
    const body = { preset: presets.value || null, host: value("host"), port: Number(value("port")) || null,
      tls: tls.value, username: value("username") || null, enabled: document.getElementById("f-enabled").checked };
    if (auth.value === "oauth2") {
      body.oauth2 = { client_id: value("client_id"), tenant: value("tenant"), token_url: value("token_url"),
        client_secret: document.getElementById("f-client_secret").value, grant: grant.value, mechanism: mechanism.value };
      return body;
    }
    const secret = document.getElementById("f-password").value;
    if (secret) body.password = secret;
    return body;
  };
  content.append(el("form", { id: "relay-form" },
    field(t("preset"), presets), field(t("host"), input("host", { value: config.host || "" })),
    field(t("port"), input("port", { type: "number", value: config.port || "" })), field(t("tls"), tls),
    tlsHint,
    field(t("username"), input("username", { value: config.username || "", autocomplete: "off",
      oninput: syncTls })),
    field(t("auth_method"), auth), password, oauth2,
    el("label", { class: "check" }, input("enabled", { type: "checkbox", checked: config.enabled }), t("enabled")),
    el("div", { class: "buttons" },
      button(t("test"), guarded(async () => {
        say("…");
        const result = await api("POST", "/api/relay/test", form());
        steps.replaceChildren(table([t("step"), t("time_ms"), t("reply")],
          result.steps.map((s) => [(s.ok ? "✔ " : "✘ ") + s.step, String(s.ms), s.error || s.reply])));
        say(result.ok ? t("test_ok") : result.error, !result.ok);
      }), { id: "test" }),
      button(t("save"), guarded(async () => {
        const body = form();
        if (!body.preset) delete body.preset;
        await api("POST", "/api/relay/config", body);
        say(t("saved"));
      }), { id: "save" }))), steps);
  showAuth();
  syncTls();
}

async function queueList(state) {
  const filters = el("form", { class: "filters" },
    field(t("sender"), input("sender")), field(t("recipient"), input("recipient")),
    el("button", { type: "submit" }, t("filter")));
  const list = el("div", { id: "list" });
  const load = guarded(async () => {
    const query = new URLSearchParams({ state, sender: value("sender"), recipient: value("recipient") });
    const data = await api("GET", "/api/queue?" + query);
    list.replaceChildren(table([t("queue_id"), t("sender"), t("recipient"), t("age"), state === "failed" ? t("reason") : t("state"), t("actions")],
      data.messages.map((m) => [
        el("a", { href: "#", class: "qid", onclick: (e) => { e.preventDefault(); details(m.queue_id, list); } }, m.queue_id),
        m.sender || "<>", m.recipients.map((r) => r.address + " (" + r.state + ")").join(", "),
        String(m.age_seconds), state === "failed" ? (m.reason || "") : m.state,
        el("span", {}, actionsFor(state).map((a) => button(t(a), guarded(async () => {
          if (a === "delete") { if (!confirm(t("confirm"))) return; await api("DELETE", "/api/queue/" + m.queue_id); }
          else await api("POST", "/api/queue/" + m.queue_id + "/" + a);
          await load();
        }), { class: "small", "data-action": a })))])));
  });
  filters.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  const bulk = state === "failed"
    ? button(t("retry_failed"), guarded(async () => { await api("POST", "/admin/retry-failed"); await load(); }), { id: "bulk" })
    : button(t("retry_all"), guarded(async () => { await api("POST", "/api/queue/flush"); await load(); }), { id: "bulk" });
  content.append(filters, el("div", { class: "buttons" }, bulk), list);
  await load();
}

function actionsFor(state) {
  if (state === "failed") return ["retry", "delete"];
  if (state === "hold") return ["release", "delete"];
  return ["retry", "hold", "bounce", "delete"];
}

async function details(qid, list) {
  const m = await api("GET", "/api/queue/" + encodeURIComponent(qid));
  const box = el("section", { class: "details", id: "details" }, el("h2", {}, qid),
    el("pre", { id: "headers" }, m.headers || ""),
    table([t("recipient"), t("state"), t("reply")], m.recipients.map((r) => [r.address, r.state, r.last_reply || ""])));
  document.getElementById("details")?.remove();
  list.before(box);
}

async function credentials() {
  const list = el("div", { id: "list" });
  const shown = el("p", { id: "password-once", class: "once" });
  const load = guarded(async () => {
    const data = await api("GET", "/api/smtp-credentials");
    list.replaceChildren(table([t("name"), t("hourly_quota"), t("daily_quota"), t("sender_domains"), t("actions")],
      data.credentials.map((c) => [c.name, String(c.hourly_quota ?? "-"), String(c.daily_quota ?? "-"),
        c.allowed_sender_domains.join(", "), el("span", {},
          button(t("reset_password"), guarded(async () => {
            const r = await api("POST", "/api/smtp-credentials/" + encodeURIComponent(c.name) + "/reset-password");
            shown.textContent = t("password_once") + ": " + r.password;
          }), { class: "small" }),
          button(t("delete"), guarded(async () => {
            if (!confirm(t("confirm"))) return;
            await api("DELETE", "/api/smtp-credentials/" + encodeURIComponent(c.name)); await load();
          }), { class: "small" }))])));
  });
  const quota = (name) => (value(name) ? Number(value(name)) : null);
  const form = el("form", { id: "create" }, field(t("name"), input("name")),
    field(t("hourly_quota"), input("hourly_quota", { type: "number", min: 1 })),
    field(t("daily_quota"), input("daily_quota", { type: "number", min: 1 })),
    field(t("sender_domains"), input("domains")), el("button", { type: "submit" }, t("create")));
  form.addEventListener("submit", guarded(async (e) => {
    e.preventDefault();
    const r = await api("POST", "/api/smtp-credentials", { name: value("name"), hourly_quota: quota("hourly_quota"),
      daily_quota: quota("daily_quota"), allowed_sender_domains: value("domains").split(",").map((x) => x.trim()).filter(Boolean) });
    shown.textContent = t("password_once") + ": " + r.password;
    await load();
  }));
  content.append(form, shown, list);
  await load();
}

async function logs() {
  const status = el("select", { id: "f-status" }, el("option", { value: "" }, "*"),
    ["received", "sent", "deferred", "bounced"].map((s) => el("option", { value: s }, t(s))));
  const list = el("div", { id: "list" });
  const form = el("form", { class: "filters" }, field(t("sender"), input("sender")),
    field(t("recipient"), input("recipient")), field(t("queue_id"), input("queue_id")),
    field(t("status"), status), el("button", { type: "submit" }, t("search")));
  const load = guarded(async () => {
    const query = new URLSearchParams({ sender: value("sender"), recipient: value("recipient"),
      queue_id: value("queue_id"), status: status.value, limit: 200 });
    const data = await api("GET", "/api/mail-logs?" + query);
    list.replaceChildren(table([t("time"), t("queue_id"), t("sender"), t("recipient"), t("status"), t("reply")],
      data.items.map((r) => [r.time, r.queue_id, r.sender || "<>", r.recipient, t(r.status), r.reply || ""])));
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  content.append(form, list);
  await load();
}

async function send() {
  const form = el("form", { id: "send" }, field(t("from"), input("from", { type: "email" })),
    field(t("to"), input("to")), field(t("subject"), input("subject")),
    field(t("text"), el("textarea", { id: "f-text", rows: 8 })), el("button", { type: "submit" }, t("send")));
  form.addEventListener("submit", guarded(async (e) => {
    e.preventDefault();
    const r = await api("POST", "/api/send", { from: value("from"), to: value("to"), subject: value("subject"),
      text: document.getElementById("f-text").value });
    say(t("queued_as") + " " + r.queue_id);
  }));
  content.append(form);
}

const PAGES = { login, dashboard, relay, queue: () => queueList("queue"), failed: () => queueList("failed"), credentials, logs, send };

guarded(async () => {
  document.cookie = "lang=" + C.lang + "; Path=/; SameSite=Strict";
  if (C.page !== "login") csrf = (await api("GET", "/api/session")).csrf;
  document.getElementById("logout")?.addEventListener("click", guarded(async () => {
    await api("POST", "/logout"); location.href = "/login";
  }));
  await PAGES[C.page]();
})();
