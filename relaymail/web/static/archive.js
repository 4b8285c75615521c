// Archive: the copies of accepted mail, searched (sender, recipient, subject, Message-ID,
// status, time), and one message read (/archive?id=QUEUE_ID): envelope, headers, text, the
// HTML part in a sandboxed frame (no scripts, no same origin; its own CSP blocks every
// remote load, images too until "load remote images"), attachments, links, raw source.
"use strict";

const ARCHIVE_PAGE = 50;
const ARCHIVE_STATUSES = ["received", "deferred", "sent", "bounced", "failed"];

function archivePath(qid, rest) { return "/api/archive/" + encodeURIComponent(qid) + (rest || ""); }

// A small link to a message's archived copy (delivery log rows), when the archive is on.
function archivedLink(qid) {
  if (!hasPage("archive")) return null;
  return el("a", { href: "/archive?id=" + encodeURIComponent(qid), class: "archived", title: t("view_archived") }, t("archived_short"));
}

function megabytes(n) { return (Number(n) / 1048576).toLocaleString(LOCALE, { maximumFractionDigits: 1 }); }

PAGES.archive = async function archive() {
  const params = new URLSearchParams(location.search);
  if (params.get("id")) return archivedMessage(params.get("id"));
  const status = el("select", { id: "f-status" }, el("option", { value: "" }, t("any_status")),
    ARCHIVE_STATUSES.map((s) => el("option", { value: s }, t("state_" + s))));
  const list = el("div", { id: "list" });
  const pages = el("div", { class: "pager", id: "pager" });
  const usage = el("p", { class: "hint", id: "usage" });
  let offset = 0;
  const form = onSubmit(el("form", { class: "filters", id: "archive-search" },
    field(t("sender"), input("sender", { type: "search" })), field(t("recipient"), input("recipient", { type: "search" })),
    field(t("subject"), input("subject", { type: "search" })), field(t("message_id"), input("message_id", { type: "search" })),
    field(t("status"), status), field(t("since"), input("since", { type: "datetime-local" })), field(t("until"), input("until", { type: "datetime-local" })),
    el("button", { type: "submit" }, t("search"))), async () => { offset = 0; await load(); });
  const load = async () => {
    const query = searchQuery({ sender: value("sender"), recipient: value("recipient"), subject: value("subject"),
      message_id: value("message_id"), status: status.value, since: isoOf(value("since")), until: isoOf(value("until")),
      limit: ARCHIVE_PAGE, offset });
    const answer = await api("GET", "/api/archive?" + query);
    usage.textContent = t("archive_usage", { n: answer.usage.messages, mb: megabytes(answer.usage.bytes),
      max: megabytes(answer.usage.max_bytes), days: answer.usage.retention_days });
    list.replaceChildren(table([t("received_at"), t("queue_id"), t("sender"), t("recipients"), t("subject"), t("status"), t("size")],
      answer.items.map((m) => [timeCell(m.received),
        el("a", { href: "/archive?id=" + encodeURIComponent(m.queue_id), class: "qid", translate: "no" }, m.queue_id),
        data(m.sender || "<>"), data(m.recipients.map((r) => r.address).join(", ")), data(m.subject || ""),
        stateLabel(m.status), data(Number(m.size).toLocaleString(LOCALE))]), { id: "archive-table" }));
    pager(pages, offset, answer.items.length, answer.total, ARCHIVE_PAGE, async (at) => { offset = at; await load(); });
  };
  content.append(el("p", { class: "hint" }, t("explain_archive")), form, usage, pages, list);
  try {
    await load();
  } catch (e) {
    notHere(e, "archive_off");
  }
};

async function archivedMessage(qid) {
  content.append(el("p", { class: "buttons" }, el("a", { href: "/archive" }, t("back_to_archive")),
    el("a", { href: "/queue?id=" + encodeURIComponent(qid) }, t("in_queue")),
    el("a", { href: "/logs?queue_id=" + encodeURIComponent(qid) }, t("in_log"))));
  let m;
  try {
    m = await api("GET", archivePath(qid));
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && !e.body.code) return notHere(e, "archive_off");
    throw e;
  }
  const box = el("section", { id: "archived" });
  box.append(el("h2", {}, data(m.subject || t("no_subject"))),
    el("dl", { class: "facts", id: "envelope" },
      el("dt", {}, t("queue_id")), el("dd", {}, qidLink(m.queue_id)),
      el("dt", {}, t("received_at")), el("dd", {}, timeCell(m.received)),
      el("dt", {}, t("envelope_sender")), el("dd", {}, data(m.sender || "<>")),
      el("dt", {}, t("header_from")), el("dd", {}, data(m.from || "")),
      el("dt", {}, t("message_id")), el("dd", {}, data(m.message_id || "")),
      el("dt", {}, t("credential")), el("dd", {}, data(m.credential || "-")),
      el("dt", {}, t("status")), el("dd", {}, stateLabel(m.status)),
      el("dt", {}, t("size")), el("dd", {}, data(Number(m.size).toLocaleString(LOCALE))),
      m.bounce_of ? [el("dt", {}, t("bounce_of")), el("dd", {}, el("a", { href: "/archive?id=" + encodeURIComponent(m.bounce_of), class: "qid", translate: "no" }, m.bounce_of))] : null),
    el("h3", {}, t("recipients")),
    table([t("recipient"), t("status"), t("reply"), t("time")], m.recipients.map((r) =>
      [data(r.address), stateLabel(r.status), data(r.reply || "", { class: "data reply" }), timeCell(r.time)]), { id: "recipients" }),
    el("h3", {}, t("headers")),
    table([t("header_name"), t("header_value")], m.headers.map(([name, v]) => [data(name), data(v)]), { id: "headers", class: "cards-on-phone headers" }));
  if (m.has_html) box.append(el("h3", {}, t("html_part")), htmlFrame(qid));
  if (m.text !== null) box.append(el("h3", {}, t("text_part")), el("pre", { id: "text", translate: "no" }, m.text));
  box.append(el("h3", {}, t("attachments")),
    table([t("filename"), t("content_type"), t("size"), t("shown"), t("actions")], m.attachments.map((a) => [
      data(a.filename || a.download_name), data(a.content_type), data(Number(a.size).toLocaleString(LOCALE)),
      a.inline ? t("inline") : t("attached"),
      el("a", { href: archivePath(qid, "/parts/" + a.index), download: a.download_name, class: "download" }, t("download"))]), { id: "attachments" }));
  if (m.links.length) box.append(el("h3", {}, t("links")), el("ul", { id: "links", class: "links" }, m.links.map((href) => el("li", {}, data(href)))));
  const raw = el("pre", { id: "raw", translate: "no", hidden: true });
  box.append(el("h3", {}, t("raw_source")), el("div", { class: "buttons" },
    button(t("show_raw"), async () => {
      const response = await fetch(archivePath(qid, "/raw"), { credentials: "same-origin" });
      if (!response.ok) throw new ApiError(await response.json().catch(() => ({})), response.status);
      raw.textContent = await response.text();
      raw.hidden = false;
      return null;
    }, { id: "show-raw" }),
    el("a", { href: archivePath(qid, "/raw?download=1"), id: "download-raw" }, t("download_raw"))), raw);
  content.append(box);
}

// The HTML part in a frame with every sandbox restriction (no allow-* at all); its own CSP
// lets it load nothing remote until the reader asks for the images.
function htmlFrame(qid) {
  const frame = el("iframe", { sandbox: true, id: "html-frame", class: "mail-html", title: t("html_part"),
    referrerpolicy: "no-referrer", src: archivePath(qid, "/html") });
  const remote = button(t("load_remote_images"), async () => {
    frame.src = archivePath(qid, "/html?remote_images=1");
    remote.hidden = true;
    note.textContent = t("remote_images_on");
    return null;
  }, { id: "remote-images", class: "small" });
  const note = el("small", { class: "hint", id: "remote-note" }, t("remote_images_off"));
  return el("div", { class: "html-view" }, el("div", { class: "buttons" }, remote, note), frame);
}
