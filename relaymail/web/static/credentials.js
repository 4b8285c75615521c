// SMTP credentials: create, edit in place (quotas, allowed domains, enabled) through PATCH,
// usage against quota from the history, a connection snippet with a copy button, the
// one-time password shown until the next action.
//
// Two kinds of login are listed: the credentials file's (the admin's, named freely) and the
// account users' (relay_<8 hex>_<4 hex>, with a name of the user's choosing).  An account
// user sees and makes only their own; an admin sees every login, with its user, and makes
// one for a named account as well as the file's.  A login without a quota of its own says
// so, or names its account's quota when that applies.
"use strict";

function usageText(used, quota, accountText) {
  if (quota) return t("usage_of", { used: used || 0, quota });
  return accountText ? accountText(used || 0) : t("usage_no_quota", { used: used || 0 });
}

// The accounts whose limits apply to the listed logins: an account user's own (from
// /api/auth/me), every account for an admin (none where accounts are off).
async function accountsOfLogins() {
  if (isUser()) {
    const me = await api("GET", "/api/auth/me");
    return me.user ? [me.user] : [];
  }
  try { return (await api("GET", "/api/users")).users; } catch (e) {
    if (e instanceof ApiError && [403, 404].includes(e.status)) return [];
    throw e;
  }
}

function snippet(name) {
  const listener = (C.listeners || [])[0] || { host: location.hostname, port: 2525, tls: "starttls" };
  return [t("snippet_host") + " " + listener.host, t("snippet_port") + " " + listener.port,
    t("snippet_security") + " " + t("listener_tls_" + listener.tls), t("snippet_username") + " " + name].join("\n");
}

// The SMTP username of a listed credential (an account login's is generated).
function loginOf(c) { return c.source === "account" ? c.username : c.name; }

function credentialPath(login, rest) { return "/api/smtp-credentials/" + encodeURIComponent(login) + (rest || ""); }

PAGES.credentials = async function credentials() {
  const list = el("div", { id: "list" });
  const shown = el("div", { id: "password-once", class: "once", hidden: true });
  const showOnce = (login, password, warning) => onceBox(shown, t("password_once_for", { name: login }), password,
    [el("div", { class: "snippet" }, el("pre", { translate: "no", id: "once-snippet" }, snippet(login))),
      warning ? el("p", { class: "warning" }, t("unrestricted_warning")) : null]);
  const forget = () => forgetBox(shown);
  let owners = await accountsOfLogins();
  const load = async (fresh = true) => {  // the accounts again, but not just after reading them
    const [answer, usage, users] = await Promise.all([api("GET", "/api/smtp-credentials"),
      api("GET", "/api/mail-logs/usage").catch(() => ({ credentials: {} })), fresh ? accountsOfLogins() : owners]);
    owners = users;
    const accounts = isUser() || answer.credentials.some((c) => c.source === "account");
    const whose = !isUser() && accounts;
    const headers = [t("login_col"), accounts ? t("label") : null, whose ? t("account_user") : null, t("enabled_col"),
      t("hourly_quota"), t("daily_quota"), t("sender_domains"), t("connection"), t("actions")].filter(Boolean);
    list.replaceChildren(table(headers, answer.credentials.map((c) => row(c, usage.credentials[loginOf(c)] || {}, accounts, whose)),
      { id: "credentials-table" }));
  };
  const row = (c, used, accounts, whose) => {
    const login = loginOf(c);
    const account = c.source === "account";
    const enabled = el("input", { type: "checkbox", checked: c.enabled, "aria-label": t("enabled_col"), class: "edit-enabled" });
    const label = account ? el("input", { value: c.name, class: "edit-name", "aria-label": t("label"), maxlength: 128 }) : null;
    const limits = limitEditors(c);
    const text = snippet(login);
    const owner = account ? owners.find((u) => u.username === c.user) : null;
    const perHour = owner && owner.hourly_quota ? (n) => t("usage_account_hour", { used: n, quota: owner.hourly_quota }) : null;
    const perDay = owner && owner.daily_quota ? (n) => t("usage_account_day", { used: n, quota: owner.daily_quota }) : null;
    return [data(login, { class: "data login" }), accounts ? label || "" : null,
      whose ? (account ? data(c.user) : el("span", { class: "hint" }, t("file_login"))) : null, enabled,
      el("div", {}, limits.hourly, el("small", { class: "usage" }, usageText(used.hour, c.hourly_quota, perHour))),
      el("div", {}, limits.daily, el("small", { class: "usage" }, usageText(used.day, c.daily_quota, perDay))),
      limits.domains,
      el("div", { class: "snippet" }, el("pre", { translate: "no" }, text),
        button(t("copy"), async () => copyText(text), { class: "small copy" })),
      el("span", { class: "actions" },
        button(t("save"), async () => {
          forget();
          const change = { enabled: enabled.checked, ...limits.values() };
          if (label && label.value.trim() && label.value.trim() !== c.name) change.name = label.value.trim();
          await api("PATCH", credentialPath(login), change);
          await load();
          return t("credential_saved", { name: login });
        }, { class: "small", "data-action": "save", "data-name": login }),
        button(t("reset_password"), async () => {
          forget();
          if (!confirm(t("confirm_reset", { name: login }))) return null;
          const r = await api("POST", credentialPath(login, "/reset-password"));
          showOnce(login, r.password);
          return t("password_reset", { name: login });
        }, { class: "small", "data-action": "reset", "data-name": login }),
        button(t("delete"), async () => {
          forget();
          if (!confirm(t("confirm_delete_credential", { name: login }))) return null;
          await api("DELETE", credentialPath(login));
          await load();
          return t("credential_deleted", { name: login });
        }, { class: "small", "data-action": "delete", "data-name": login }))].filter((cell) => cell !== null);
  };
  // An account user names the login for themselves (the SMTP username is generated); the
  // admin names a credentials-file login, or (an account chosen) labels that account's.
  const filePattern = "[A-Za-z0-9.@+_\\-]+";
  const nameField = isUser()
    ? field(t("label"), input("name", { required: true, maxlength: 128, autocomplete: "off" }), t("label_hint"))
    : field(t("name"), input("name", { required: true, pattern: filePattern, autocomplete: "off" }));
  // The name follows the choice: a label for an account's login, the file's rules otherwise.
  const fitName = () => {
    const name = document.getElementById("f-name");
    if (value("user")) { name.removeAttribute("pattern"); name.maxLength = 128; } else { name.pattern = filePattern; name.removeAttribute("maxlength"); }
  };
  const ownerField = !isUser() && owners.length ? field(t("for_account"), el("select", { id: "f-user", name: "user", onchange: fitName },
    el("option", { value: "" }, t("for_account_file")),
    owners.map((u) => el("option", { value: u.username, translate: "no" }, u.username))), t("for_account_hint")) : null;
  const form = onSubmit(el("form", { id: "create" }, ownerField, nameField,
    limitFields(isUser() ? t("sender_domains_hint_user") : null), el("button", { type: "submit" }, t("create"))), async () => {
    forget();
    say("");
    const body = { name: value("name"), ...limitValues() };
    if (value("user")) body.user = value("user");
    const r = await api("POST", "/api/smtp-credentials", body);
    const login = r.username || r.credential.name;
    showOnce(login, r.password, r.warning);
    form.reset();
    if (ownerField) fitName();
    await load();
    return t("credential_created", { name: login });
  });
  content.append(el("p", { class: "hint" }, t(isUser() ? "credentials_explain_user" : "credentials_explain")), form, shown,
    el("h2", {}, t("credentials_list")), list);
  await load(false);
};
