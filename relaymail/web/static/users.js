// Accounts (admin): every user with role, enabled, quotas and sender domains edited in
// place, their number of SMTP credentials and last login; a new user (the password is
// generated and shown once), a password reset (shown once), delete, and invitations when
// registration is by invitation.  API keys (everyone): the caller's keys, a new one with
// its scopes (the key is shown once), revoke.
"use strict";

function userPath(id, rest) { return "/api/users/" + encodeURIComponent(id) + (rest || ""); }

function roleSelect(current, attrs) {
  return el("select", { class: "edit-role", "aria-label": t("role"), ...(attrs || {}) },
    ["user", "admin"].map((r) => el("option", { value: r, selected: r === current }, t("role_" + r))));
}

PAGES.users = async function users() {
  const list = el("div", { id: "list" });
  const once = el("div", { id: "secret-once", class: "once", hidden: true });
  const invites = el("div", { id: "invites" });
  const forget = () => forgetBox(once);
  let answer;
  try { answer = await api("GET", "/api/users"); } catch (e) { return notHere(e, "accounts_off"); }
  const load = async () => {
    answer = await api("GET", "/api/users");
    list.replaceChildren(table([t("username"), t("email"), t("role"), t("enabled_col"), t("hourly_quota"), t("daily_quota"),
      t("sender_domains"), t("credentials_n"), t("last_login"), t("actions")], answer.users.map(row), { id: "users-table" }));
  };
  const row = (u) => {
    const enabled = el("input", { type: "checkbox", checked: u.enabled, "aria-label": t("enabled_col"), class: "edit-enabled" });
    const role = roleSelect(u.role);
    const limits = limitEditors(u);
    const who = { name: u.username };
    return [data(u.username, { class: "data username" }), data(u.email), role, enabled, limits.hourly, limits.daily, limits.domains,
      String(u.smtp_credentials), u.last_login ? timeCell(u.last_login) : el("span", { class: "hint" }, t("never")),
      el("span", { class: "actions" },
        button(t("save"), async () => {
          forget();
          await api("PATCH", userPath(u.id), { role: role.value, enabled: enabled.checked, ...limits.values() });
          await load();
          return t("user_saved", who);
        }, { class: "small", "data-action": "save", "data-user": u.username }),
        button(u.enabled ? t("disable") : t("enable"), async () => {
          forget();
          await api("PATCH", userPath(u.id), { enabled: !u.enabled });
          await load();
          return t(u.enabled ? "user_disabled" : "user_enabled", who);
        }, { class: "small", "data-action": "toggle", "data-user": u.username }),
        button(t("reset_password"), async () => {
          forget();
          if (!confirm(t("confirm_reset_user", who))) return null;
          const r = await api("POST", userPath(u.id, "/reset-password"));
          onceBox(once, t("password_once_for", who), r.password);
          return t("password_reset", who);
        }, { class: "small", "data-action": "reset", "data-user": u.username }),
        button(t("delete"), async () => {
          forget();
          if (!confirm(t("confirm_delete_user", who))) return null;
          await api("DELETE", userPath(u.id));
          await load();
          return t("user_deleted", who);
        }, { class: "small", "data-action": "delete", "data-user": u.username }))];
  };
  const form = onSubmit(el("form", { id: "create" },
    el("div", { class: "row" },
      field(t("username"), input("username", { required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{2,63}", autocomplete: "off" })),
      field(t("email"), input("email", { type: "email", required: true, autocomplete: "off" })),
      field(t("role"), roleSelect("user", { id: "f-role" }))),
    el("div", { class: "row" }, limitFields()),
    el("p", { class: "hint" }, t("user_password_hint")), el("button", { type: "submit" }, t("create_user"))), async () => {
    forget();
    say("");
    const username = value("username");
    const r = await api("POST", "/api/users", { username, email: value("email"), role: value("role"), ...limitValues() });
    onceBox(once, t("password_once_for", { name: username }), r.password);
    form.reset();
    await load();
    return t("user_created", { name: username });
  });
  content.append(el("p", { class: "hint" }, t("users_explain")), el("p", { class: "hint", id: "registration" },
    t("registration_" + answer.registration)), form, once, invites, el("h2", {}, t("users_list")), list);
  if (answer.registration === "invite") invites.append(inviteForm(once, forget));
  await load();
};

function inviteForm(once, forget) {
  const form = onSubmit(el("form", { id: "invite" }, el("h2", {}, t("invite")),
    el("div", { class: "row" }, field(t("email"), input("invite_email", { type: "email", required: true, autocomplete: "off" })),
      field(t("role"), roleSelect("user", { id: "f-invite_role" }))),
    el("button", { type: "submit" }, t("make_invite"))), async () => {
    forget();
    const r = await api("POST", "/api/users/invites", { email: value("invite_email"), role: value("invite_role") });
    const link = location.origin + "/register?invite=" + encodeURIComponent(r.invite);
    onceBox(once, t("invite_once_for", { email: r.email }), r.invite,
      el("p", {}, t("invite_link"), " ", data(link, { id: "invite-link" })));
    form.reset();
    return t("invite_made", { email: r.email });
  });
  return form;
}

const SCOPES = ["send", "read-logs", "manage-credentials", "admin"];

PAGES.keys = async function keys() {
  const list = el("div", { id: "list" });
  const once = el("div", { id: "key-once", class: "once", hidden: true });
  const forget = () => forgetBox(once);
  const load = async () => {
    const answer = await api("GET", "/api/api-keys");
    list.replaceChildren(table([t("name"), t("key_prefix"), t("scopes"), t("created"), t("last_used"), t("actions")],
      answer.api_keys.map((k) => [data(k.name), data(k.prefix + "…", { class: "data prefix" }),
        el("span", {}, k.scopes.map((s) => el("span", { class: "state scope" }, t("scope_" + s)))),
        timeCell(k.created), k.last_used ? timeCell(k.last_used) : el("span", { class: "hint" }, t("never")),
        button(t("revoke"), async () => {
          forget();
          if (!confirm(t("confirm_revoke", { name: k.name }))) return null;
          await api("DELETE", "/api/api-keys/" + encodeURIComponent(k.id));
          await load();
          return t("key_revoked", { name: k.name });
        }, { class: "small", "data-action": "revoke", "data-key": k.id })]), { id: "keys-table" }));
  };
  const offered = SCOPES.filter((s) => s !== "admin" || !isUser());
  const form = onSubmit(el("form", { id: "create" },
    field(t("name"), input("name", { required: true, maxlength: 128, autocomplete: "off" })),
    el("fieldset", { id: "scopes" }, el("legend", {}, t("scopes")), offered.map((s) =>
      el("label", { class: "check" }, el("input", { type: "checkbox", value: s, name: "scope", id: "f-scope-" + s,
        checked: s === "send" || s === "read-logs" }), t("scope_" + s), el("small", { class: "hint" }, t("scope_" + s + "_hint"))))),
    el("button", { type: "submit" }, t("create_key"))), async () => {
    forget();
    say("");
    const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map((x) => x.value);
    const name = value("name");
    const r = await api("POST", "/api/api-keys", { name, scopes });
    onceBox(once, t("key_once_for", { name }), r.key, el("p", { class: "hint" }, t("key_use")));
    form.reset();
    await load();
    return t("key_created", { name });
  });
  try { await load(); } catch (e) { return notHere(e, "accounts_off"); }
  content.append(el("p", { class: "hint" }, t("keys_explain")), form, once, el("h2", {}, t("keys_list")), list);
};
