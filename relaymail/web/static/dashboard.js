// Dashboard: health and why, the queue now (messages), the last 24 hours from the delivery
// history (which survives restarts), where mail goes, the upstreams in use, charts.
"use strict";

const SERIES = () => [["received", t("received")], ["sent", t("sent")], ["deferred", t("deferred")], ["bounced", t("bounced")]];

function card(id, label, content, link) {
  const body = el("b", {}, content);
  return el("div", { class: "card", id: "card-" + id }, el("small", {}, label), link ? el("a", { href: link }, body) : body);
}

function reasonText(reason) {
  if (has("reason_" + reason.code)) return t("reason_" + reason.code, { upstreams: (reason.upstreams || []).join(", "), rate: reason.rate, ...(reason.params || {}) });
  return reason.message;
}

function destinationText(d) {
  if (d.type === "maildir") return [t("dest_outbox"), " ", data(d.path || d.transport)];
  if (d.type === "mx") return t("dest_mx");
  if (d.type === "upstreams") return [t("dest_upstreams"), " ", data((d.upstreams || []).join(", "))];
  return t("dest_none");
}

// The queue depth sampled over the hours of the per-hour charts: its peak per step.
function queueDepth(stats, hourLabel) {
  const start = Date.parse(stats.per_hour[0].hour);
  const end = Date.parse(stats.per_hour[stats.per_hour.length - 1].hour) + 3600e3;
  const step = (stats.queue_depth_step_s || 300) * 1000;
  const points = (stats.queue_depth || []).map((s) => ({ time: Date.parse(s.t), value: s.messages,
    title: when(s.t) + ": " + t("queue_depth_point", { n: s.messages }) }));
  return [el("h2", {}, t("queue_depth")),
    lineChart("queue-chart", points, { label: t("queue_depth"), start, end, step, tickEvery: 3 * 3600e3, tickLabel: hourLabel }),
    el("p", { class: "hint", id: "queue-depth-note" },
      points.length ? t("queue_depth_note", { minutes: step / 60000 }) : t("queue_depth_none"))];
}

PAGES.dashboard = async function dashboard() {
  const box = el("div", { id: "dashboard" });
  content.append(box, el("div", { class: "buttons" }, autoRefresh(() => draw(box), 15)));
  await draw(box);
};

// The relay's state (health, queue, upstreams) is the admin's: an account user sees the
// counts and charts of their own mail only (the API answers 403 to the rest, which is not
// an error here).
async function adminOnly(path) {
  if (isUser()) return null;
  try {
    return await api("GET", path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return null;
    throw e;
  }
}

async function draw(box) {
  const [health, stats, status] = await Promise.all([
    adminOnly("/health"), api("GET", "/api/mail-logs/stats?hours=24"), adminOnly("/api/relay/status")]);
  const parts = [...(health ? relayNow(health) : []),
    el("h2", {}, t(isUser() ? "last_24h_own" : "last_24h")), ...lastDay(stats),
    ...(status ? relayRoutes(status) : []), ...(health ? workers(health.details) : []), ...charts(stats, !!health)];
  box.replaceChildren(...parts.filter(Boolean));
}

function relayNow(health) {
  const d = health.details;
  const reasons = d.degraded_reasons || [];
  return [
    el("div", { class: "cards", id: "cards-now" },
      card("status", t("status"), stateLabel(health.status)),
      card("queued", t("queued_messages"), String(d.queued_emails), "/queue"),
      card("held", t("held_messages"), String(d.held_emails), "/hold"),
      card("failed", t("failed_messages"), String(d.failed_emails), "/failed"),
      card("disk", t("disk"), String(d.disk_space_available_mb))),
    reasons.length ? el("ul", { class: "reasons", id: "reasons" }, reasons.map((r) => el("li", {}, reasonText(r)))) : null];
}

function lastDay(stats) {
  const totals = stats.totals;
  return [el("div", { class: "cards", id: "cards-24h" },
    card("received", t("messages_received"), String(stats.messages_received)),
    card("sent", t("recipients_sent"), String(totals.sent), "/logs?status=sent"),
    card("deferred", t("recipients_deferred"), String(totals.deferred), "/logs?status=deferred"),
    card("bounced", t("recipients_bounced"), String(totals.bounced), "/logs?status=bounced"),
    card("rate", t("success_rate"), stats.success_rate + " %")),
  el("p", { class: "hint" }, t(isUser() ? "counts_note_user" : "counts_note"))];
}

function relayRoutes(status) {
  return [el("h2", {}, t("destination")),
    el("p", { id: "destination" }, destinationText(status.destination || {})),
    el("h2", {}, t("upstreams")),
    table([t("host"), t("transport"), t("status"), t("last_success"), t("relayed"), t("last_error")],
      status.upstreams.map((u) => [data(u.upstream), data(u.transport), stateLabel(u.state),
        timeCell(u.last_success ? new Date(u.last_success * 1000).toISOString() : null),
        String(u.messages_relayed), u.state === "down" && u.last_error ? data(u.last_error, { class: "data reply" }) : ""]),
      { id: "upstreams" })];
}

function workers(d) {
  if (!d.workers) return [];  // acceptor processes (smtp.workers > 0)
  return [el("h2", {}, t("workers")), table([t("worker"), t("pid"), t("status"), t("restarts")],
    d.workers.map((w) => [data(w.id), data(w.pid), stateLabel(w.alive ? "up" : "down"), String(w.restarts)]), { id: "workers" })];
}

// The per-hour charts; the queue depth and per-upstream outcomes are the relay's (admins).
function charts(stats, relay) {
  const hourLabel = (time) => new Date(time).toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit", hour12: false });
  const hours = stats.per_hour.map((h) => ({ label: hourLabel(h.hour), title: when(h.hour), values: h }));
  return [el("h2", {}, t("per_hour")), stackedBars("chart", hours, SERIES(), { label: t("per_hour") }),
    el("h2", {}, t("latency")), stackedBars("latency-chart", hours.map((h) => ({ ...h, values: { latency: h.values.latency_s || 0 } })),
      [["latency", t("latency_s")]], { label: t("latency"), unit: "" }),
    ...(relay ? queueDepth(stats, hourLabel) : []),
    ...(relay ? [el("h2", {}, t("per_upstream")), hbars("upstream-chart", (stats.per_upstream || []).map((u) => ({ label: u.upstream, values: u })), SERIES().slice(1))] : []),
    el("h2", {}, t("per_credential")), hbars("credential-chart", (stats.per_credential || []).map((c) => ({ label: c.credential, values: { received: c.messages } })), [["received", t("messages")]])];
}
