// Relay settings: the list of upstreams (order = failover) each with its preset, TLS,
// login, throttles and its own connection test; which fields come from the preset and which
// are overridden; whether mail goes through them; and the routes (domains -> transport).
"use strict";

const TLS_MODES = ["starttls", "implicit", "opportunistic", "none"];

function presetOf(name) { return C.presets.find((p) => p.name === name) || null; }

// What a provider wants as the login, in the reader's language when the catalogue has it.
function authNote(p) {
  for (const key of [p.name, p.name.replace(/-(gz|sg|ap-.*|us-.*|eu-.*)$/, ""), p.name.startsWith("amazon-ses") ? "amazon-ses" : ""]) {
    if (key && has("auth_note_" + key)) return t("auth_note_" + key);
  }
  return p.auth_note === "username and password" ? t("auth_note_default") : p.auth_note;
}

// One upstream's editor; ``saved`` is its masked view (password "********").
function upstreamEditor(saved, index, list) {
  const u = { ...saved };
  // The primary's fields keep their plain ids (f-host, f-password ...); backups add "-N".
  const id = (name) => (index === 0 ? name : name + "-" + index);
  const presets = el("select", { id: "f-" + id("preset") }, el("option", { value: "" }, t("custom")),
    C.presets.map((p) => el("option", { value: p.name, selected: p.name === u.preset, translate: "no" }, p.label)));
  const host = input(id("host"), { value: u.host || "", autocomplete: "off" });
  const port = input(id("port"), { type: "number", min: 1, max: 65535, value: u.port || "" });
  const tls = el("select", { id: "f-" + id("tls") }, TLS_MODES.map((m) => el("option", { value: m, selected: m === (u.tls || "starttls") }, t("tls_" + m))));
  const username = input(id("username"), { value: u.username || "", autocomplete: "off" });
  const password = input(id("password"), { type: "password", autocomplete: "new-password", placeholder: u.password ? t("password_keep") : "" });
  const maxRate = input(id("max_rate"), { value: u.max_rate || "", placeholder: "100/min", pattern: "\\s*\\d+\\s*/\\s*(s|sec|m|min|h|hour|d|day)\\s*" });
  const maxConnections = input(id("max_connections"), { type: "number", min: 1, value: u.max_connections || "" });
  const o = u.oauth2 || {};
  const auth = select(id("auth"), [["password", t("auth_password")], ["oauth2", t("auth_oauth2")]], u.oauth2 ? "oauth2" : "password");
  const oauth2Note = el("p", { class: "hint", id: id("oauth2-note") });
  const oauth2 = el("fieldset", { class: "oauth2", id: index === 0 ? "oauth2-fields" : "oauth2-fields-" + index }, el("legend", {}, t("oauth2")),
    field(t("client_id"), input(id("client_id"), { value: o.client_id || "", autocomplete: "off" })),
    field(t("tenant"), input(id("tenant"), { value: o.tenant || "", autocomplete: "off" })),
    field(t("token_url"), input(id("token_url"), { value: o.token_url || "", autocomplete: "off" })),
    field(t("client_secret"), input(id("client_secret"), { type: "password", autocomplete: "new-password", placeholder: o.client_secret_set ? t("password_keep") : "" })),
    field(t("grant"), select(id("grant"), [["refresh_token", t("grant_user")], ["client_credentials", t("grant_app")]], o.grant || "refresh_token")),
    field(t("mechanism"), select(id("mechanism"), [["XOAUTH2", "XOAUTH2"], ["OAUTHBEARER", "OAUTHBEARER"]], o.mechanism || "XOAUTH2")),
    oauth2Note);
  const origin = { host: el("small", { class: "origin", id: "origin-" + id("host") }), port: el("small", { class: "origin", id: "origin-" + id("port") }),
    tls: el("small", { class: "origin", id: "origin-" + id("tls") }) };
  const presetNote = el("p", { class: "hint", id: id("preset-note") });
  const tlsHint = el("p", { class: "hint", id: id("tls-hint") });
  const steps = el("div", { class: "steps", id: id("steps") });
  const controls = { host, port, tls };

  // Preset or overridden, field by field: said next to each field.
  const explain = () => {
    const p = presetOf(presets.value);
    for (const key of ["host", "port", "tls"]) {
      const given = String(controls[key].value).trim();
      if (!p) { origin[key].textContent = ""; continue; }
      const fromPreset = String(p[key]);
      if (!given) origin[key].textContent = t("origin_empty", { value: fromPreset });
      else if (given === fromPreset) origin[key].textContent = t("origin_preset", { preset: p.label });
      else origin[key].textContent = t("origin_overridden", { value: fromPreset });
      origin[key].className = "origin " + (!given || given === fromPreset ? "from-preset" : "overridden");
    }
    presetNote.textContent = p ? t("preset_note", { preset: p.label }) + (p.auth_note ? " " + t("login_is", { note: authNote(p) }) : "") : t("custom_note");
    oauth2Note.textContent = (p && p.auth_note ? authNote(p) + ". " : "") + t("oauth2_hint");
    const isOAuth2 = auth.value === "oauth2";
    oauth2.hidden = !isOAuth2;
    password.closest("label").hidden = isOAuth2;
  };
  const syncTls = () => {  // credentials go only to a verified server: the API refuses the rest
    const login = Boolean(username.value.trim());
    for (const option of tls.options) if (option.value === "opportunistic" || option.value === "none") option.disabled = login;
    if (login && tls.selectedOptions[0] && tls.selectedOptions[0].disabled) tls.value = "starttls";
    tlsHint.textContent = login ? t("tls_verified_only") : "";
    explain();
  };
  presets.addEventListener("change", () => {
    const p = presetOf(presets.value);
    if (p) { host.value = p.host; port.value = p.port; tls.value = p.tls; if (p.oauth2) auth.value = "oauth2"; }
    syncTls();
  });
  for (const node of [host, port, tls, auth]) node.addEventListener("input", explain);
  auth.addEventListener("change", explain);
  username.addEventListener("input", syncTls);

  const body = () => {
    const item = { ...saved };
    for (const key of ["overrides"]) delete item[key];
    Object.assign(item, { preset: presets.value || null, host: host.value.trim() || null, port: Number(port.value) || null,
      tls: tls.value, username: username.value.trim() || null, max_rate: maxRate.value.trim() || null,
      max_connections: Number(maxConnections.value) || null });
    if (password.value) item.password = password.value;
    if (auth.value === "oauth2") {
      item.oauth2 = { ...(saved.oauth2 || {}), client_id: value(id("client_id")), tenant: value(id("tenant")), token_url: value(id("token_url")),
        client_secret: document.getElementById("f-" + id("client_secret")).value, grant: value(id("grant")), mechanism: value(id("mechanism")) };
      delete item.password;
    } else {
      item.oauth2 = null;
    }
    return item;
  };
  const box = el("fieldset", { class: "upstream", id: "upstream-" + index, "data-index": index },
    el("legend", {}, index === 0 ? t("upstream_primary") : t("upstream_backup", { n: index })),
    field(t("preset"), presets), presetNote,
    field(t("host"), host, origin.host), field(t("port"), port, origin.port), field(t("tls"), tls, origin.tls), tlsHint,
    field(t("username"), username), field(t("auth_method"), auth), field(t("password"), password), oauth2,
    el("div", { class: "row" }, field(t("max_rate"), maxRate, t("max_rate_hint")), field(t("max_connections"), maxConnections)),
    el("div", { class: "buttons" },
      button(t("test"), async () => {
        const answer = await api("POST", "/api/relay/test", { ...body(), index });
        steps.replaceChildren(table([t("step"), t("time_ms"), t("reply")], answer.steps.map((s) =>
          [el("span", { class: s.ok ? "ok" : "bad" }, (s.ok ? "\u2714 " : "\u2718 "), has("step_" + s.step) ? t("step_" + s.step) : data(s.step)),
            String(s.ms), s.error ? errorText({ error: s.error, code: s.code, params: s.params }) : data(s.reply)])));
        if (!answer.ok) throw new ApiError(answer, 200);
        return t("test_ok");
      }, { class: "test", id: id("test") }),
      button(t("move_up"), async () => { list.move(index, -1); return null; }, { class: "small", disabled: index === 0 }),
      button(t("move_down"), async () => { list.move(index, 1); return null; }, { class: "small", disabled: index === list.size() - 1 }),
      button(t("remove"), async () => { list.remove(index); return null; }, { class: "small", disabled: list.size() === 1 })),
    steps);
  box.body = body;
  syncTls();
  return box;
}

PAGES.relay = async function relay() {
  const config = await api("GET", "/api/relay/config");
  let items = config.upstreams.length ? config.upstreams.slice() : [{ tls: "starttls", port: 587 }];
  const holder = el("div", { id: "upstreams" });
  const list = {
    size: () => items.length,
    current: () => [...holder.querySelectorAll("fieldset.upstream")].map((box) => box.body()),
    draw: () => holder.replaceChildren(...items.map((u, i) => upstreamEditor(u, i, list))),
    move: (i, step) => { items = list.current(); const [u] = items.splice(i, 1); items.splice(i + step, 0, u); list.draw(); },
    remove: (i) => { items = list.current(); items.splice(i, 1); list.draw(); },
  };
  list.draw();
  const enabled = el("input", { type: "checkbox", id: "f-enabled", checked: config.enabled });
  const form = el("form", { id: "relay-form" },
    el("p", { class: "hint" }, t("upstreams_explain")), holder,
    el("div", { class: "buttons" }, button(t("add_upstream"), async () => { items = list.current(); items.push({ tls: "starttls", port: 587 }); list.draw(); return null; }, { id: "add-upstream" })),
    el("label", { class: "check" }, enabled, t("enabled")),
    el("p", { class: "hint" }, config.enabled ? t("enabled_now", { transport: config.transport }) : t("disabled_now")),
    el("div", { class: "buttons" }, button(t("save"), async () => {
      if (!form.reportValidity()) return null;
      const saved = await api("POST", "/api/relay/config", { upstreams: list.current(), enabled: enabled.checked });
      items = saved.upstreams;
      list.draw();
      return saved.enabled ? t("saved_enabled", { n: saved.upstreams.length }) : t("saved_disabled");
    }, { id: "save" })));
  content.append(form, routesEditor(config));
};

function routesEditor(config) {
  const names = Object.keys(config.transports || {});
  let routes = (config.routes || []).map((r) => ({ ...r }));
  const holder = el("div", { id: "routes" });
  const read = () => [...holder.querySelectorAll(".route")].map((row, i) => ({ ...routes[i],
    domains: row.querySelector(".domains").value.split(",").map((x) => x.trim()).filter(Boolean),
    transport: row.querySelector("select").value }));
  const draw = () => holder.replaceChildren(...routes.map((r, i) => el("div", { class: "route row", id: "route-" + i },
    field(t("route_domains"), el("input", { class: "domains", id: "f-route-domains-" + i, value: (r.domains || []).join(", "), required: true })),
    field(t("transport"), el("select", { id: "f-route-transport-" + i }, names.map((n) =>
      el("option", { value: n, selected: n === r.transport }, n + " (" + (has("type_" + config.transports[n].type) ? t("type_" + config.transports[n].type) : config.transports[n].type) + ")")))),
    button(t("remove"), async () => { routes = read(); routes.splice(i, 1); draw(); return null; }, { class: "small", disabled: routes.length === 1 }))));
  draw();
  return el("section", { id: "routes-editor" }, el("h2", {}, t("routes")), el("p", { class: "hint" }, t("routes_explain")), holder,
    el("div", { class: "buttons" },
      button(t("add_route"), async () => { routes = read(); routes.splice(Math.max(0, routes.length - 1), 0, { domains: [], transport: names[0] }); draw(); return null; }, { id: "add-route" }),
      button(t("save_routes"), async () => {
        const saved = await api("POST", "/api/relay/config", { routes: read() });
        routes = saved.routes;
        draw();
        return t("routes_saved", { n: saved.routes.length });
      }, { id: "save-routes" })));
}
