// SMTP credentials: create, edit in place (quotas, allowed domains, enabled) through PATCH,
// usage against quota from the history, a connection snippet with a copy button, the
// one-time password shown until the next action.
"use strict";

function quotaValue(text) { const n = Number(String(text).trim()); return String(text).trim() && n > 0 ? n : null; }
function domainList(text) { return String(text).split(",").map((x) => x.trim()).filter(Boolean); }

function usageText(used, quota) {
  return quota ? t("usage_of", { used: used || 0, quota }) : t("usage_no_quota", { used: used || 0 });
}

function snippet(name) {
  const listener = (C.listeners || [])[0] || { host: location.hostname, port: 2525, tls: "starttls" };
  return [t("snippet_host") + " " + listener.host, t("snippet_port") + " " + listener.port,
    t("snippet_security") + " " + t("tls_" + listener.tls), t("snippet_username") + " " + name].join("\n");
}

PAGES.credentials = async function credentials() {
  const list = el("div", { id: "list" });
  const shown = el("div", { id: "password-once", class: "once", hidden: true });
  const showOnce = (name, password, warning) => {
    shown.hidden = false;
    shown.replaceChildren(el("p", {}, t("password_once_for", { name })),
      el("pre", { translate: "no", id: "once-value" }, password),
      button(t("copy"), async () => copyText(password), { class: "small", id: "copy-password" }),
      warning ? el("p", { class: "warning" }, t("unrestricted_warning")) : null);
  };
  const forget = () => { shown.hidden = true; shown.replaceChildren(); };
  const load = async () => {
    const [answer, usage] = await Promise.all([api("GET", "/api/smtp-credentials"),
      api("GET", "/api/mail-logs/usage").catch(() => ({ credentials: {} }))]);
    list.replaceChildren(table([t("name"), t("enabled_col"), t("hourly_quota"), t("daily_quota"), t("sender_domains"), t("connection"), t("actions")],
      answer.credentials.map((c) => {
        const used = usage.credentials[c.name] || {};
        const enabled = el("input", { type: "checkbox", checked: c.enabled, "aria-label": t("enabled_col"), class: "edit-enabled" });
        const hourly = el("input", { type: "number", min: 1, value: c.hourly_quota ?? "", class: "edit-hourly", "aria-label": t("hourly_quota") });
        const daily = el("input", { type: "number", min: 1, value: c.daily_quota ?? "", class: "edit-daily", "aria-label": t("daily_quota") });
        const domains = el("input", { value: c.allowed_sender_domains.join(", "), class: "edit-domains", "aria-label": t("sender_domains") });
        const text = snippet(c.name);
        return [data(c.name), enabled,
          el("div", {}, hourly, el("small", { class: "usage" }, usageText(used.hour, c.hourly_quota))),
          el("div", {}, daily, el("small", { class: "usage" }, usageText(used.day, c.daily_quota))),
          domains,
          el("div", { class: "snippet" }, el("pre", { translate: "no" }, text),
            button(t("copy"), async () => copyText(text), { class: "small copy" })),
          el("span", { class: "actions" },
            button(t("save"), async () => {
              forget();
              await api("PATCH", "/api/smtp-credentials/" + encodeURIComponent(c.name), {
                enabled: enabled.checked, hourly_quota: quotaValue(hourly.value), daily_quota: quotaValue(daily.value),
                allowed_sender_domains: domainList(domains.value) });
              await load();
              return t("credential_saved", { name: c.name });
            }, { class: "small", "data-action": "save", "data-name": c.name }),
            button(t("reset_password"), async () => {
              forget();
              if (!confirm(t("confirm_reset", { name: c.name }))) return null;
              const r = await api("POST", "/api/smtp-credentials/" + encodeURIComponent(c.name) + "/reset-password");
              showOnce(c.name, r.password);
              return t("password_reset", { name: c.name });
            }, { class: "small", "data-action": "reset", "data-name": c.name }),
            button(t("delete"), async () => {
              forget();
              if (!confirm(t("confirm_delete_credential", { name: c.name }))) return null;
              await api("DELETE", "/api/smtp-credentials/" + encodeURIComponent(c.name));
              await load();
              return t("credential_deleted", { name: c.name });
            }, { class: "small", "data-action": "delete", "data-name": c.name }))];
      }), { id: "credentials-table" }));
  };
  const form = onSubmit(el("form", { id: "create" },
    field(t("name"), input("name", { required: true, pattern: "[A-Za-z0-9.@+_\\-]+", autocomplete: "off" })),
    field(t("hourly_quota"), input("hourly_quota", { type: "number", min: 1 })),
    field(t("daily_quota"), input("daily_quota", { type: "number", min: 1 })),
    field(t("sender_domains"), input("domains"), t("sender_domains_hint")), el("button", { type: "submit" }, t("create"))), async () => {
    forget();
    say("");
    const name = value("name");
    const r = await api("POST", "/api/smtp-credentials", { name, hourly_quota: quotaValue(value("hourly_quota")),
      daily_quota: quotaValue(value("daily_quota")), allowed_sender_domains: domainList(value("domains")) });
    showOnce(name, r.password, r.warning);
    form.reset();
    await load();
    return t("credential_created", { name });
  });
  content.append(el("p", { class: "hint" }, t("credentials_explain")), form, shown, el("h2", {}, t("credentials_list")), list);
  await load();
};
