// The signed-in account: who, its limits (set by the admin), its password changed; and
// the registration page (open without a session) for accounts.registration "open" or
// "invite".
"use strict";

PAGES.account = async function account() {
  let me;
  try { me = await api("GET", "/api/auth/me"); } catch (e) { return notHere(e, "accounts_off"); }
  const user = me.user;
  if (!user) {  // the configured admin: the password is in the configuration
    content.append(el("p", { class: "hint", id: "admin-password" }, t("admin_password_config")));
    return;
  }
  const quota = (n) => (n ? String(n) : t("no_quota"));
  content.append(el("dl", { class: "facts", id: "me" },
    el("dt", {}, t("username")), el("dd", {}, data(user.username)),
    el("dt", {}, t("email")), el("dd", {}, data(user.email)),
    el("dt", {}, t("role")), el("dd", {}, t("role_" + user.role)),
    el("dt", {}, t("hourly_quota")), el("dd", {}, quota(user.hourly_quota)),
    el("dt", {}, t("daily_quota")), el("dd", {}, quota(user.daily_quota)),
    el("dt", {}, t("sender_domains")), el("dd", {}, user.allowed_sender_domains.length
      ? data(user.allowed_sender_domains.join(", ")) : t("any_sender"))),
  el("p", { class: "hint" }, t("account_limits_note")));
  const form = onSubmit(el("form", { id: "password" }, el("h2", {}, t("change_password")),
    field(t("current_password"), input("current", { type: "password", autocomplete: "current-password", required: true })),
    field(t("new_password_own"), input("new", { type: "password", autocomplete: "new-password", required: true }), t("password_rule_account", { n: C.min_password_length || 10 })),
    field(t("confirm_password"), input("confirm", { type: "password", autocomplete: "new-password", required: true })),
    el("button", { type: "submit" }, t("change_password"))), async () => {
    const next = document.getElementById("f-new").value;
    if (next !== document.getElementById("f-confirm").value) return say(t("err_setup_mismatch"), true);
    await api("POST", "/api/auth/password", { current_password: document.getElementById("f-current").value, new_password: next });
    // A new password ends the account's sessions, this one too: sign in again with it.
    csrf = (await api("POST", "/login", { username: user.username, password: next })).csrf;
    form.reset();
    return t("password_changed");
  });
  content.append(form);
};

PAGES.register = async function register() {
  const invite = new URLSearchParams(location.search).get("invite") || "";
  const invited = C.registration === "invite" || invite !== "";
  const form = onSubmit(el("form", { id: "register" },
    el("p", { class: "hint" }, t(invited ? "register_explain_invite" : "register_explain")),
    field(t("username"), input("username", { required: true, autocomplete: "username", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{2,63}" }), t("username_rule")),
    field(t("email"), input("email", { type: "email", required: true, autocomplete: "email" })),
    field(t("password"), input("password", { type: "password", required: true, autocomplete: "new-password" }), t("password_rule_account", { n: C.min_password_length || 10 })),
    invited ? field(t("invite_code"), input("invite", { required: true, value: invite, autocomplete: "off" })) : null,
    el("button", { type: "submit" }, t("register_submit"))), async () => {
    const password = document.getElementById("f-password").value;
    const body = { username: value("username"), email: value("email"), password };
    if (invited) body.invite = value("invite");
    await api("POST", "/api/auth/register", body);
    await api("POST", "/login", { username: body.username, password });
    location.href = "/";
  });
  content.append(form, el("p", {}, el("a", { href: "/login", id: "to-login" }, t("have_account"))));
};
