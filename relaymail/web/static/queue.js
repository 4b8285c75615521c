// Queue, held mail and failed mail: each message with its state in words, attempts, next
// retry and last reply per recipient; actions that say what they did; a message page with
// headers and its timeline from the delivery history (/queue?id=QUEUE_ID), linked to its
// archived copy when the archive is on.
"use strict";

// The state an operator thinks in: delivering, queued (never tried), deferred, held, failed.
function messageState(m) {
  if (m.state === "active") return "active";
  if (m.state === "queue") return m.attempts ? "deferred" : "queue";
  return m.state;  // hold, failed
}

function recipientState(r) {
  if (r.state === "pending") return r.attempts ? "deferred" : "pending";
  return r.state;  // delivered, failed
}

function recipientList(m) {
  return el("ul", { class: "rcpts" }, m.recipients.map((r) => el("li", {},
    data(r.address), " ", stateLabel(recipientState(r)),
    r.attempts ? el("small", {}, " " + t("attempts_n", { n: r.attempts })) : null,
    r.last_reply ? el("div", { class: "reply" }, data(r.last_reply)) : null)));
}

function actionsFor(state) {
  if (state === "failed") return ["retry", "delete"];
  if (state === "hold") return ["release", "delete"];
  return ["retry", "hold", "bounce", "delete"];
}

async function act(action, qid) {
  if ((action === "delete" || action === "bounce") && !confirm(t("confirm_" + action, { qid }))) return null;
  if (action === "delete") await api("DELETE", "/api/queue/" + encodeURIComponent(qid));
  else await api("POST", "/api/queue/" + encodeURIComponent(qid) + "/" + action);
  return t("done_" + action, { qid });
}

function queuePage(state) {
  return async function page() {
    const params = new URLSearchParams(location.search);
    if (state === "queue" && params.get("id")) return messagePage(params.get("id"));
    const filters = onSubmit(el("form", { class: "filters" },
      field(t("sender"), input("sender", { type: "search" })), field(t("recipient"), input("recipient", { type: "search" })),
      el("button", { type: "submit" }, t("filter"))), async () => { await load(); });
    const list = el("div", { id: "list" });
    const total = el("p", { id: "total", class: "hint" });
    const pausing = el("div", { id: "pausing" });
    const showPause = (paused) => {
      if (state !== "queue") return;
      const toggle = paused
        ? button(t("resume_delivery"), async () => { await api("POST", "/api/queue/resume"); await load(); return t("done_resume"); }, { id: "resume" })
        : button(t("pause_delivery"), async () => {
          if (!confirm(t("confirm_pause"))) return null;
          await api("POST", "/api/queue/pause"); await load(); return t("done_pause");
        }, { id: "pause", class: "small" });
      pausing.replaceChildren(paused ? el("p", { class: "warning", id: "paused-notice" }, t("delivery_paused_notice")) : "", toggle);
    };
    const load = async () => {
      const query = new URLSearchParams({ state, sender: value("sender"), recipient: value("recipient"), limit: 200 });
      const answer = await api("GET", "/api/queue?" + query);
      showPause(answer.paused);
      total.textContent = t("messages_total", { n: answer.total });
      list.replaceChildren(table([t("queue_id"), t("sender"), t("received_at"), t("state"), t("attempts"), state === "failed" ? t("reason") : t("next_retry"), t("recipients"), t("actions")],
        answer.messages.map((m) => {
          const shown = messageState(m);
          return [qidLink(m.queue_id), data(m.sender || "<>"), timeCell(m.received_at), stateLabel(shown), String(m.attempts),
            state === "failed" ? data(m.reason || "", { class: "data reply" }) : (m.next_attempt ? timeCell(m.next_attempt) : (shown === "active" ? t("now") : "")),
            recipientList(m),
            el("span", { class: "actions" }, actionsFor(state).map((a) => button(t(a), async () => {
              const done = await act(a, m.queue_id);
              if (done) { await load(); say(done); }
              return null;
            }, { class: "small", "data-action": a, "data-qid": m.queue_id })))];
        }), { id: "queue-table" }));
    };
    const bulk = state === "failed"
      ? button(t("retry_failed"), async () => { const r = await api("POST", "/admin/retry-failed"); await load(); return t("done_retry_failed", { n: r.requeued }); }, { id: "bulk" })
      : state === "queue"
        ? button(t("retry_all"), async () => { const r = await api("POST", "/api/queue/flush"); await load(); return t("done_flush", { n: r.flushed }); }, { id: "bulk" })
        : null;
    const reload = button(t("reload"), async () => { await load(); return null; }, { id: "reload" });
    content.append(el("p", { class: "hint" }, t("explain_" + state)), pausing, filters,
      el("div", { class: "buttons" }, bulk, reload, autoRefresh(guarded(load), 5)), total, list);
    await load();
  };
}

PAGES.queue = queuePage("queue");
PAGES.hold = queuePage("hold");
PAGES.failed = queuePage("failed");

async function messagePage(qid) {
  const box = el("section", { id: "details" });
  content.append(el("p", { class: "buttons" }, el("a", { href: "/queue" }, t("back_to_queue")),
    hasPage("archive") ? el("a", { href: "/archive?id=" + encodeURIComponent(qid), id: "archived-copy" }, t("view_archived")) : null), box);
  const load = async () => {
    let m = null;
    try {
      m = await api("GET", "/api/queue/" + encodeURIComponent(qid));
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
    }
    const history = await api("GET", "/api/mail-logs?" + new URLSearchParams({ queue_id: qid, limit: 500 })).catch(() => ({ items: [] }));
    const events = history.items.slice().reverse();  // oldest first
    const parts = [el("h2", {}, data(qid))];
    if (m) {
      const shown = messageState(m);
      parts.push(el("dl", { class: "facts" },
        el("dt", {}, t("state")), el("dd", {}, stateLabel(shown)),
        el("dt", {}, t("sender")), el("dd", {}, data(m.sender || "<>")),
        el("dt", {}, t("received_at")), el("dd", {}, timeCell(m.received_at)),
        el("dt", {}, t("attempts")), el("dd", {}, String(m.attempts)),
        el("dt", {}, t("next_retry")), el("dd", {}, m.next_attempt ? timeCell(m.next_attempt) : "-"),
        el("dt", {}, t("size")), el("dd", {}, data(m.size))),
      el("div", { class: "buttons" }, actionsFor(m.state === "active" ? "queue" : m.state).map((a) => button(t(a), async () => {
        const done = await act(a, qid);
        if (done) { await load(); say(done); }
        return null;
      }, { class: "small", "data-action": a }))),
      el("h3", {}, t("recipients")),
      table([t("recipient"), t("state"), t("attempts"), t("reply")], m.recipients.map((r) =>
        [data(r.address), stateLabel(recipientState(r)), String(r.attempts), data(r.last_reply || "", { class: "data reply" })]), { id: "recipients" }));
    } else {
      parts.push(el("p", { id: "gone" }, t("message_gone")));
    }
    parts.push(el("h3", {}, t("timeline")), table([t("time"), t("event"), t("recipient"), t("relay_host"), t("reply")],
      events.map((e) => [timeCell(e.time), stateLabel(e.status), data(e.recipient), data(e.relay || ""), data(e.reply || "", { class: "data reply" })]),
      { id: "timeline" }));
    if (m) parts.push(el("h3", {}, t("headers")), el("pre", { id: "headers", translate: "no" }, m.headers || ""));
    box.replaceChildren(...parts);
  };
  content.append(el("div", { class: "buttons" }, autoRefresh(guarded(load), 5)));
  await load();
}
