// Delivery log (filters, date range, pages, total; readable times, queue IDs linked to the
// queue and, when the archive is on, to the archived copy), the send form, the login page
// (with a link to registration when it is open) and the first-run setup page.
"use strict";

const PAGE_SIZE = 50;

function isoOf(localValue) { return localValue ? new Date(localValue).toISOString() : ""; }

PAGES.logs = async function logs() {
  const params = new URLSearchParams(location.search);
  const status = el("select", { id: "f-status" }, el("option", { value: "" }, t("any_status")),
    ["received", "sent", "deferred", "bounced"].map((s) => el("option", { value: s, selected: params.get("status") === s }, t(s))));
  const list = el("div", { id: "list" });
  const pages = el("div", { class: "pager", id: "pager" });
  let offset = 0;
  const form = onSubmit(el("form", { class: "filters" }, field(t("sender"), input("sender", { type: "search" })),
    field(t("recipient"), input("recipient", { type: "search" })), field(t("queue_id"), input("queue_id", { type: "search", value: params.get("queue_id") || "" })),
    field(t("status"), status), field(t("since"), input("since", { type: "datetime-local" })), field(t("until"), input("until", { type: "datetime-local" })),
    el("button", { type: "submit" }, t("search"))), async () => { offset = 0; await load(); });
  const load = async () => {
    const query = searchQuery({ sender: value("sender"), recipient: value("recipient"), queue_id: value("queue_id"),
      status: status.value, since: isoOf(value("since")), until: isoOf(value("until")), limit: PAGE_SIZE, offset });
    const answer = await api("GET", "/api/mail-logs?" + query);
    list.replaceChildren(table([t("time"), t("queue_id"), t("sender"), t("recipient"), t("status"), t("relay_host"), t("reply")],
      answer.items.map((r) => [timeCell(r.time), el("span", {}, qidLink(r.queue_id), archivedLink(r.queue_id)), data(r.sender || "<>"),
        data(r.recipient), stateLabel(r.status), data(r.relay || ""), data(r.reply || "", { class: "data reply" })]), { id: "log-table" }));
    pager(pages, offset, answer.items.length, answer.total, PAGE_SIZE, async (at) => { offset = at; await load(); });
  };
  content.append(form, pages, list);
  await load();
};

// An account user's From: their account's first allowed sender address, when it lists one.
async function ownSender() {
  if (!isUser()) return "";
  const me = await api("GET", "/api/auth/me").catch(() => ({}));
  return ((me.user && me.user.allowed_sender_domains) || []).find((d) => d.includes("@")) || "";
}

PAGES.send = async function send() {
  const sender = await ownSender();
  const form = onSubmit(el("form", { id: "send" },
    field(t("from"), input("from", { type: "email", required: true, autocomplete: "email", value: sender })),
    field(t("to"), input("to", { required: true, pattern: "\\s*[^@\\s,]+@[^@\\s,]+(\\s*,\\s*[^@\\s,]+@[^@\\s,]+)*\\s*" }), t("to_hint")),
    field(t("subject"), input("subject", { required: true, maxlength: 998 })),
    field(t("text"), el("textarea", { id: "f-text", rows: 8, required: true })), el("button", { type: "submit" }, t("send"))), async () => {
    const r = await api("POST", "/api/send", { from: value("from"), to: value("to"), subject: value("subject"),
      text: document.getElementById("f-text").value });
    form.reset();
    const box = document.getElementById("message");
    box.className = "ok";
    box.replaceChildren(t("queued_as"), qidLink(r.queue_id));
    return undefined;
  });
  content.append(form);
};

PAGES.login = async function login() {
  const accounts = ["open", "invite"].includes(C.registration);  // people register: no "admin" filled in
  if (C.setup_pending) content.append(el("p", { class: "warning", id: "setup-note" }, t("setup_pending_note")));
  const form = onSubmit(el("form", { id: "login" },
    field(t("login_name"), input("username", { autocomplete: "username", value: accounts ? "" : "admin", required: true })),
    field(t("password"), input("password", { type: "password", autocomplete: "current-password", required: true })),
    el("button", { type: "submit" }, t("login"))), async () => {
    await api("POST", "/login", { username: value("username"), password: document.getElementById("f-password").value });
    location.href = "/";
  });
  content.append(form);
  if (accounts) content.append(el("p", { id: "register-link" }, el("a", { href: "/register" }, t("register_link"))));
};

PAGES.setup = async function setup() {
  const token = new URLSearchParams(location.search).get("token") || "";
  const form = onSubmit(el("form", { id: "setup" },
    el("p", { class: "hint" }, t("setup_explain")),
    field(t("setup_token"), input("token", { value: token, required: true, autocomplete: "off" }), t("setup_token_hint")),
    field(t("new_password"), input("password", { type: "password", autocomplete: "new-password", required: true, minlength: 10 }), t("password_rule")),
    field(t("confirm_password"), input("confirm", { type: "password", autocomplete: "new-password", required: true, minlength: 10 })),
    el("button", { type: "submit" }, t("set_password"))), async () => {
    const password = document.getElementById("f-password").value;
    await api("POST", "/setup", { token: value("token"), password, confirm: document.getElementById("f-confirm").value });
    location.href = "/";
  });
  content.append(form);
};
