// Webhooks (each endpoint's backlog, deliveries and last error; deliveries by state, failed
// ones sent again one by one or all at once) and the suppression list (search, add,
// remove, export, import).  A relay without webhooks or with the list off says so.
"use strict";

const EVENTS_PAGE = 50;

PAGES.webhooks = async function webhooks() {
  const endpoints = el("div", { id: "endpoints" });
  const list = el("div", { id: "deliveries" });
  const pages = el("div", { class: "pager", id: "pager" });
  const state = el("select", { id: "f-state" }, el("option", { value: "" }, t("any_status")),
    ["failed", "pending", "delivered"].map((s) => el("option", { value: s, selected: s === "failed" }, t("state_" + s))));
  let offset = 0;
  const loadEndpoints = async () => {
    const answer = await api("GET", "/api/webhooks");
    endpoints.replaceChildren(table([t("name"), t("url"), t("events"), t("backlog"), t("delivered_n"), t("failed_n"), t("last_success"), t("last_error")],
      answer.endpoints.map((e) => [data(e.name), data(e.url), data(e.events.join(", ")), String(e.backlog), String(e.delivered), String(e.failed_kept),
        timeCell(e.last_success), e.last_error ? el("span", {}, timeCell(e.last_error_at), " ", data(e.last_error, { class: "data reply" })) : ""]),
      { id: "endpoint-table" }));
  };
  const loadDeliveries = async () => {
    const answer = await api("GET", "/api/webhooks/deliveries?" + searchQuery({ state: state.value, limit: EVENTS_PAGE, offset }));
    list.replaceChildren(table([t("time"), t("name"), t("event"), t("queue_id"), t("state"), t("attempts"), t("last_error"), t("actions")],
      answer.items.map((d) => [timeCell(d.created), data(d.endpoint), data(d.event), d.queue_id ? qidLink(d.queue_id) : "", stateLabel(d.state),
        String(d.attempts), data(d.last_error || "", { class: "data reply" }),
        d.state === "failed" ? button(t("retry"), async () => {
          await api("POST", "/api/webhooks/deliveries/" + encodeURIComponent(d.id) + "/retry");
          await load();
          return t("done_webhook_retry", { id: d.id });
        }, { class: "small", "data-action": "retry", "data-id": d.id }) : ""]), { id: "delivery-table" }));
    pager(pages, offset, answer.items.length, answer.total, EVENTS_PAGE, async (at) => { offset = at; await loadDeliveries(); });
  };
  const load = async () => { await loadEndpoints(); await loadDeliveries(); };
  const filters = onSubmit(el("form", { class: "filters" }, field(t("state"), state), el("button", { type: "submit" }, t("filter"))),
    async () => { offset = 0; await loadDeliveries(); });
  const bulk = button(t("retry_failed_webhooks"), async () => {
    const r = await api("POST", "/api/webhooks/retry-failed");
    await load();
    return t("done_webhook_retry_all", { n: r.retried });
  }, { id: "bulk" });
  content.append(el("p", { class: "hint" }, t("explain_webhooks")), el("h2", {}, t("endpoints")), endpoints,
    el("h2", {}, t("deliveries")), filters, el("div", { class: "buttons" }, bulk, button(t("reload"), async () => { await load(); return null; }, { id: "reload" })),
    pages, list);
  try {
    await load();
  } catch (e) {
    notHere(e, "webhooks_off");
  }
};

PAGES.suppressions = async function suppressions() {
  const list = el("div", { id: "list" });
  const pages = el("div", { class: "pager", id: "pager" });
  let offset = 0;
  const load = async () => {
    const answer = await api("GET", "/api/suppressions?" + searchQuery({ q: value("q"), limit: EVENTS_PAGE, offset }));
    list.replaceChildren(table([t("address"), t("reason"), t("source"), t("queue_id"), t("added_at"), t("actions")],
      answer.items.map((s) => [data(s.address), data(s.reason, { class: "data reply" }), has("source_" + s.source) ? t("source_" + s.source) : data(s.source),
        s.queue_id ? qidLink(s.queue_id) : "", timeCell(s.created),
        button(t("remove"), async () => {
          if (!confirm(t("confirm_unsuppress", { address: s.address }))) return null;
          await api("DELETE", "/api/suppressions/" + encodeURIComponent(s.address));
          await load();
          return t("done_unsuppress", { address: s.address });
        }, { class: "small", "data-action": "remove", "data-address": s.address })]), { id: "suppression-table" }));
    pager(pages, offset, answer.items.length, answer.total, EVENTS_PAGE, async (at) => { offset = at; await load(); });
  };
  const search = onSubmit(el("form", { class: "filters", id: "suppression-search" },
    field(t("address"), input("q", { type: "search" })), el("button", { type: "submit" }, t("search"))), async () => { offset = 0; await load(); });
  const add = onSubmit(el("form", { class: "row", id: "suppression-add" },
    field(t("address"), input("address", { type: "email", required: true, maxlength: 320 })),
    field(t("reason"), input("reason", { maxlength: 500 })), el("button", { type: "submit" }, t("add"))), async () => {
    const r = await api("POST", "/api/suppressions", { address: value("address"), reason: value("reason") });
    add.reset();
    offset = 0;
    await load();
    return t(r.added ? "done_suppress" : "already_suppressed", { address: r.address });
  });
  const text = el("textarea", { id: "f-csv", rows: 4, translate: "no" });
  const importer = el("div", { id: "suppression-import" }, field(t("import_csv"), text, t("import_hint")),
    el("div", { class: "buttons" }, button(t("import"), async () => {
      const r = await api("POST", "/api/suppressions/import", { csv: text.value });
      text.value = "";
      offset = 0;
      await load();
      return t("done_import", { n: r.added });
    }, { id: "import" }), el("a", { href: "/api/suppressions/export", download: "suppressions.csv", id: "export" }, t("export_csv"))));
  content.append(el("p", { class: "hint" }, t("explain_suppressions")), search, pages, list,
    el("h2", {}, t("suppress_add")), add, el("h2", {}, t("import_export")), importer);
  try {
    await load();
  } catch (e) {
    notHere(e, "suppressions_off");
  }
};
