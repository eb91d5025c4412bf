// The twinctl console page. Everything it shows comes from the console's
// own API (never the hub's); every write is one of the API's specific
// calls with the page's CSRF token. Text from the hub is put into the DOM
// as text, never as HTML.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  let info = { sections: [], agentMethods: [] };
  let cleanup = []; // closes the streams of the current view
  const schemaCache = new Map();

  // el builds an element: el("a", {href: "#"}, "text", child…).
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the page's CSP, unlike a style attribute
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of kids.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // put replaces the children of node, skipping absent ones.
  function put(node, ...kids) {
    node.replaceChildren(...kids.flat().filter((k) => k !== undefined && k !== null && k !== false));
  }

  // keepFocus runs a re-render and gives the focus back to the element
  // with the same id, so that a live update never takes the keyboard's
  // place away.
  function keepFocus(fn) {
    const a = document.activeElement;
    const id = a && a !== document.body ? a.id : "";
    fn();
    if (id && (!document.activeElement || document.activeElement.id !== id)) {
      const e = document.getElementById(id);
      if (e) e.focus({ preventScroll: true });
    }
  }

  function badge(s) {
    return s ? el("span", { class: "badge " + s }, s) : el("span", { class: "dim" }, "—");
  }

  function when(t) {
    if (!t || t.startsWith("0001-")) return "";
    const d = new Date(t);
    if (isNaN(d)) return t;
    return d.toLocaleString(undefined, { hour12: false });
  }

  function pretty(v) {
    return v === undefined ? "" : JSON.stringify(v, null, 2);
  }

  async function api(method, path, body) {
    const opts = { method, headers: { "X-Twinctl-Csrf": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    const text = await r.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = { error: text };
    }
    return { status: r.status, ok: r.ok, data: data || {} };
  }

  // stream follows a view of the hub through server-sent events.
  function stream(params, onData, onError) {
    const es = new EventSource("/api/watch?" + new URLSearchParams(params));
    es.onopen = () => setLive(true);
    es.onerror = () => setLive(false);
    es.onmessage = (ev) => {
      setLive(true);
      const m = JSON.parse(ev.data);
      if (m.error !== undefined) onError && onError(m.error);
      else onData(m.data);
    };
    cleanup.push(() => es.close());
  }

  function setLive(on) {
    live.className = "live " + (on ? "on" : "off");
    live.textContent = on ? "live" : "reconnecting…";
  }

  // schemaFor returns (a promise of) the section's schema, fetched once.
  function schemaFor(section) {
    if (!schemaCache.has(section)) {
      schemaCache.set(section, fetch("/api/schemas/" + encodeURIComponent(section), { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : null)).catch(() => null));
    }
    return schemaCache.get(section);
  }

  function problemList(problems) {
    return el("ul", { class: "problems", role: "alert" },
      problems.map((p) => el("li", {}, el("code", {}, p.pointer || "/"), " ", p.message)));
  }

  function notice(kind, ...kids) {
    return el("div", { class: "notice " + kind, role: kind === "error" ? "alert" : "status" }, ...kids);
  }

  // ---- routing ----

  function route() {
    for (const f of cleanup) f();
    cleanup = [];
    const h = location.hash || "#/devices";
    const [path, query] = h.slice(1).split("?");
    const q = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean);
    document.getElementById("nav-devices").toggleAttribute("aria-current", false);
    document.getElementById("nav-configs").toggleAttribute("aria-current", false);
    put(main);
    if (parts[0] === "device" && parts[1]) {
      document.getElementById("nav-devices").setAttribute("aria-current", "page");
      deviceView(decodeURIComponent(parts[1]));
    } else if (parts[0] === "configs") {
      document.getElementById("nav-configs").setAttribute("aria-current", "page");
      configsView(parts[1] === "new");
    } else {
      document.getElementById("nav-devices").setAttribute("aria-current", "page");
      devicesView(q.get("filter") || "", q.get("size") || "50");
    }
  }

  // ---- devices ----

  function devicesView(filter, size) {
    document.title = "Devices · twinctl console";
    const pages = [""]; // continuation tokens of the pages seen
    let at = 0;
    const input = el("input", { type: "text", id: "filter", class: "grow", value: filter,
      placeholder: "e.g. tags.site = 'berlin' AND properties.reported.__summary.state = 'Failed'", "aria-describedby": "filter-help" });
    const sizeSel = el("select", { id: "size", "aria-label": "Rows per page" },
      [...new Set(["20", "50", "100", "500", size])].sort((a, b) => a - b).map((n) => el("option", { value: n, selected: n === size }, n + " per page")));
    const form = el("form", { class: "card", role: "search", onsubmit: (e) => {
      e.preventDefault();
      location.hash = "#/devices?" + new URLSearchParams({ filter: input.value, size: sizeSel.value });
    } },
      el("div", { class: "row" }, el("label", { for: "filter" }, "Filter"), input, sizeSel, el("button", { class: "primary", type: "submit" }, "Apply")),
      el("div", { id: "filter-help", class: "dim", style: "font-size:.82rem;margin-top:.3rem" }, "A WHERE condition in the IoT Hub query language."));
    const status = el("div");
    const tbody = el("tbody");
    const table = el("div", { class: "table-wrap" }, el("table", { "aria-label": "Devices" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Device"), el("th", {}, "Connection"), el("th", {}, "State"), el("th", {}, "Failed sections"),
        el("th", { class: "num" }, "Desired v"), el("th", { class: "num" }, "Reported v"), el("th", { class: "hide-narrow" }, "Last activity"))),
      tbody));
    const prev = el("button", { type: "button", onclick: () => { if (at > 0) show(at - 1); } }, "← Previous");
    const next = el("button", { type: "button", onclick: () => show(at + 1) }, "Next →");
    const pageNo = el("span", { class: "dim" });
    main.append(el("h1", {}, "Devices"), form, status, table, el("nav", { class: "pager", "aria-label": "Pages" }, prev, pageNo, next));

    let lastRows = "";
    function render(d) {
      put(status);
      if (d.next && pages.length === at + 1) pages.push(d.next);
      next.disabled = !d.next;
      prev.disabled = at === 0;
      pageNo.textContent = "page " + (at + 1);
      const key = JSON.stringify(d.rows);
      if (key === lastRows) return;
      lastRows = key;
      keepFocus(() => put(tbody, ...d.rows.map((r) => el("tr", { "data-device": r.id },
        el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(r.id), id: "dev-" + r.id }, r.id)),
        el("td", {}, badge(r.connection)),
        el("td", {}, badge(r.state)),
        el("td", { class: "mono" }, r.failed || ""),
        el("td", { class: "num" }, r.desiredVersion),
        el("td", { class: "num", title: r.summaryVersion ? "the agent reconciled desired version " + r.summaryVersion : undefined },
          r.reportedVersion, r.summaryVersion && r.summaryVersion < r.desiredVersion ? el("span", { class: "c-pending" }, " (behind)") : ""),
        el("td", { class: "hide-narrow dim" }, when(r.lastActivity))))));
      if (!d.rows.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "dim" }, "No device matches.")));
    }
    function show(i) {
      for (const f of cleanup) f();
      cleanup = [];
      at = i;
      stream({ topic: "devices", filter, size, page: pages[i] || "" }, render,
        (err) => put(status, notice("error", err)));
    }
    show(0);
  }

  // ---- one device ----

  function deviceView(id) {
    document.title = id + " · twinctl console";
    const head = el("div", { class: "card" });
    const methods = el("div", { class: "card", id: "methods" });
    const sectionsBox = el("div", { id: "sections" });
    const status = el("div");
    main.append(el("h1", {}, el("a", { href: "#/devices", "aria-label": "Back to devices" }, "Devices"), " / ", el("span", { id: "device-id" }, id)),
      status, head, sectionsBox, methods);
    const cards = new Map();
    let current = null;
    methodsPanel(methods, id);

    function render(d) {
      current = d;
      put(status);
      put(head, el("dl", { class: "kv" },
        el("dt", {}, "Connection"), el("dd", {}, badge(d.connection)),
        el("dt", {}, "Agent"), el("dd", { id: "summary-state" }, badge(d.state), d.failed ? " failed: " + d.failed : ""),
        el("dt", {}, "Desired version"), el("dd", {}, d.desiredVersion, d.summaryVersion ? " (agent reconciled " + d.summaryVersion + ")" : ""),
        el("dt", {}, "Reported version"), el("dd", {}, d.reportedVersion),
        el("dt", {}, "Last activity"), el("dd", {}, when(d.lastActivity) || "—"),
        el("dt", {}, "Etag"), el("dd", { id: "etag" }, d.etag),
        d.tags ? [el("dt", {}, "Tags"), el("dd", {}, Object.entries(d.tags).map(([k, v]) => k + "=" + JSON.stringify(v)).join("  "))] : null));
      const ids = new Set(d.sections.map((s) => s.id));
      for (const [sid, c] of cards) if (!ids.has(sid) && !c.editing()) { c.node.remove(); cards.delete(sid); }
      for (const s of d.sections) {
        let c = cards.get(s.id);
        if (!c) {
          c = sectionCard(id, s.id, () => current);
          cards.set(s.id, c);
        }
        c.update(s, d.etag);
      }
      // Move cards only when the order changed: moving a node takes the
      // focus away from what is in it.
      const want = d.sections.map((s) => cards.get(s.id).node);
      const extra = [...sectionsBox.children].filter((n) => !want.includes(n));
      const order = want.concat(extra);
      if (order.some((n, i) => sectionsBox.children[i] !== n)) keepFocus(() => sectionsBox.append(...order));
      addSection(d);
    }

    const adder = el("div", { class: "card row" });
    function addSection(d) {
      const have = new Set(d.sections.map((s) => s.id));
      const free = info.sections.filter((s) => s.writable && !have.has(s.id) && !cards.has(s.id));
      if (!free.length) { adder.remove(); return; }
      const sel = el("select", { id: "add-section", "aria-label": "Section to add" }, free.map((s) => el("option", { value: s.id }, s.id)));
      put(adder, el("label", { for: "add-section" }, "Add a desired section"), sel,
        el("button", { type: "button", onclick: () => {
          const sid = sel.value;
          const c = sectionCard(id, sid, () => current);
          cards.set(sid, c);
          c.update({ id: sid, known: true, writable: true }, current.etag);
          sectionsBox.append(c.node);
          c.edit();
          addSection(current);
        } }, "Add"));
      sectionsBox.after(adder);
    }

    stream({ topic: "device", id }, render, (err) => put(status, notice("error", err)));
  }

  // sectionCard shows one section: its status and errors, desired and
  // reported side by side, its transitions while the page is open, and
  // the editor of its desired value.
  function sectionCard(deviceId, sid, device) {
    const node = el("section", { class: "card", id: "section-" + sid, "aria-labelledby": "h-" + sid });
    const headRow = el("div", { class: "section-head" });
    const errs = el("div");
    const desiredPre = el("pre", { class: "desired", "aria-label": sid + " desired" });
    const reportedPre = el("pre", { class: "reported", "aria-label": sid + " reported" });
    const sides = el("div", { class: "sides" },
      el("div", {}, el("h3", {}, "Desired"), desiredPre), el("div", {}, el("h3", {}, "Reported"), reportedPre));
    const historyList = el("ol", { class: "history", "aria-label": sid + " history" });
    const historyBox = el("details", { class: "hist" }, el("summary", {}, "State transitions while this page is open"), historyList);
    const editorBox = el("div", { class: "editor" });
    node.append(headRow, errs, sides, historyBox, editorBox);
    let last = null, lastHead = "", lastErrs = "";
    let sec = null;
    let editor = null;

    function record(st) {
      const key = st ? [st.state, st.reason, st.lastTransitionTime, st.desiredVersion].join("|") : "";
      if (!st || key === last) return;
      last = key;
      // The time the page saw it: lastTransitionTime moves only when the
      // state changes, not with every new reason or version.
      historyList.append(el("li", {}, el("time", { title: st.lastTransitionTime ? "lastTransitionTime " + when(st.lastTransitionTime) : undefined },
        new Date().toLocaleTimeString(undefined, { hour12: false })),
        badge(st.state), " ", st.reason || "", st.desiredVersion ? " (desired v" + st.desiredVersion + ")" : "", st.message ? " — " + st.message : ""));
      if (historyList.children.length > 1) historyBox.open = true;
    }

    function update(s, etag) {
      sec = s;
      const st = s.status || null;
      const headKey = JSON.stringify([st, s.writable, s.known, !!editor]);
      if (headKey !== lastHead) {
        lastHead = headKey;
        keepFocus(() => head(s, st));
      }
      const errKey = JSON.stringify(s.errors || null);
      if (errKey !== lastErrs) {
        lastErrs = errKey;
        renderErrors(s);
      }
      const dt = s.desired === undefined ? "(not desired)" : pretty(s.desired);
      const rt = s.reported === undefined ? "(nothing reported)" : pretty(s.reported);
      if (desiredPre.textContent !== dt) desiredPre.textContent = dt;
      if (reportedPre.textContent !== rt) reportedPre.textContent = rt;
      record(st);
      if (editor) editor.twinChanged(device());
    }

    function head(s, st) {
      const editBtn = s.writable ? el("button", { type: "button", class: "edit", id: "edit-" + sid, onclick: () => edit(), disabled: !!editor, "aria-label": "Edit " + sid }, "Edit") : null;
      put(headRow, el("h2", { id: "h-" + sid }, sid), badge(st && st.state), st && st.reason ? el("span", { class: "badge" }, st.reason) : null,
        el("span", { class: "msg" }, st && st.message ? st.message : ""), el("span", { class: "spacer" }),
        st && st.source ? el("span", { class: "dim", style: "font-size:.8rem" }, "from " + st.source) : null,
        !s.known ? el("span", { class: "dim" }, "no provider") : null, editBtn);
    }

    function renderErrors(s) {
      put(errs);
      if (Array.isArray(s.errors) && s.errors.length) {
        errs.append(el("ul", { class: "errors", "aria-label": sid + " errors" }, s.errors.map((e) =>
          el("li", {}, el("code", {}, e.pointer || "/"), " ", e.message, e.at ? el("span", { class: "dim" }, " (" + e.at + ")") : ""))));
      }
    }

    function edit() {
      if (editor) return;
      editor = sectionEditor(deviceId, sid, sec && sec.desired, device(), () => {
        editor = null;
        put(editorBox);
        update(sec, device().etag);
      }, () => sec, device);
      put(editorBox, editor.node);
      update(sec, device().etag);
      editor.focus();
    }

    return { node, update, edit, editing: () => !!editor };
  }

  function simpleFields(schema) {
    if (!schema || schema.type !== "object" || !schema.properties) return null;
    const fields = [];
    for (const [k, p] of Object.entries(schema.properties)) {
      if (k.startsWith("__")) continue;
      if (p.enum || p.type === "string" || p.type === "integer" || p.type === "number" || p.type === "boolean") fields.push([k, p]);
      else return null;
    }
    if (schema.additionalProperties !== false) return null;
    return fields;
  }

  // sectionEditor edits one desired section as a form (flat sections) or
  // as JSON, validated with the agent's schema before anything is sent.
  function sectionEditor(deviceId, sid, desired, base, close, getSec, currentDevice) {
    let etag = base.etag, version = base.desiredVersion;
    let value = desired === undefined || desired === null ? {} : JSON.parse(JSON.stringify(desired));
    const node = el("form", { class: "edit-form", "aria-label": "Edit " + sid, novalidate: true });
    const text = el("textarea", { id: "json-" + sid, "aria-label": sid + " desired JSON", spellcheck: "false" });
    text.value = pretty(value);
    const formBox = el("div", { class: "form-grid" });
    const out = el("div", { class: "result", "aria-live": "polite" });
    const changed = el("div");
    let mode = "json";
    let fields = null;
    const tabs = el("div", { class: "tabs", role: "group", "aria-label": "Editor" });
    const save = el("button", { class: "primary", type: "submit" }, "Validate and save");
    const cancel = el("button", { type: "button", class: "cancel", onclick: () => close() }, "Cancel");
    node.append(el("h3", {}, "Edit desired ", sid, " ", el("span", { class: "dim mono" }, "(desired version " + version + ")")), tabs, formBox, text, changed, out, el("div", { class: "row" }, save, cancel));

    schemaFor(sid).then((schema) => {
      fields = simpleFields(schema);
      if (fields) {
        const fb = el("button", { type: "button", "aria-pressed": "false", onclick: () => setMode("form") }, "Form");
        const jb = el("button", { type: "button", "aria-pressed": "true", onclick: () => setMode("json") }, "JSON");
        tabs.append(fb, jb);
        // The editor opened with the focus in the JSON text, which the
        // form now hides: the focus moves to the form's first field.
        const focused = document.activeElement === text;
        setMode("form");
        if (focused) (formBox.querySelector("input,select") || text).focus();
      }
    });

    function setMode(m) {
      if (m === mode && formBox.children.length) return;
      if (m === "form") {
        const v = parse();
        if (v.error) { put(out, notice("error", "The JSON does not parse: " + v.error)); return; }
        value = v.value;
        buildForm();
      } else {
        value = readForm();
        text.value = pretty(value);
      }
      mode = m;
      formBox.hidden = m !== "form";
      text.hidden = m !== "json";
      for (const b of tabs.children) b.setAttribute("aria-pressed", String(b.textContent.toLowerCase() === m));
    }

    function buildForm() {
      put(formBox);
      for (const [k, p] of fields) {
        const fid = "f-" + sid + "-" + k;
        let input;
        const cur = value[k];
        if (p.enum) {
          input = el("select", { id: fid, name: k }, el("option", { value: "" }, "(unset)"),
            p.enum.map((e) => el("option", { value: JSON.stringify(e), selected: JSON.stringify(e) === JSON.stringify(cur) }, String(e))));
        } else if (p.type === "boolean") {
          input = el("select", { id: fid, name: k }, el("option", { value: "" }, "(unset)"),
            el("option", { value: "true", selected: cur === true }, "true"), el("option", { value: "false", selected: cur === false }, "false"));
        } else {
          input = el("input", { id: fid, name: k, type: p.type === "string" ? "text" : "number", value: cur === undefined ? "" : String(cur) });
        }
        input.dataset.type = p.enum ? "enum" : p.type;
        formBox.append(el("label", { for: fid, title: p.description || "" }, k, (getSchemaRequired().includes(k) ? " *" : "")), input);
      }
    }
    let required = [];
    schemaFor(sid).then((s) => { required = (s && s.required) || []; });
    function getSchemaRequired() { return required; }

    function readForm() {
      const v = Object.assign({}, value);
      for (const input of formBox.querySelectorAll("input,select")) {
        const k = input.name;
        const raw = input.value;
        delete v[k];
        if (raw === "") continue;
        switch (input.dataset.type) {
          case "enum": case "boolean": v[k] = JSON.parse(raw); break;
          case "integer": case "number": v[k] = Number(raw); break;
          default: v[k] = raw;
        }
      }
      return v;
    }

    function parse() {
      try {
        return { value: JSON.parse(text.value) };
      } catch (e) {
        return { error: e.message };
      }
    }

    node.addEventListener("submit", async (e) => {
      e.preventDefault();
      let v;
      if (mode === "form") v = readForm();
      else {
        const p = parse();
        if (p.error) { put(out, notice("error", "Not JSON: " + p.error)); return; }
        v = p.value;
      }
      const schema = await schemaFor(sid);
      if (!schema) { put(out, notice("error", "No schema for " + sid + ": the console does not send what it cannot check.")); return; }
      const problems = TwinSchema.validate(schema, v);
      if (problems.length) {
        put(out, notice("error", "Not sent: " + problems.length + " problem(s) against the " + sid + " schema.", problemList(problems)));
        return;
      }
      save.disabled = true;
      put(out, notice("ok", "Sending…"));
      const r = await api("PUT", "/api/devices/" + encodeURIComponent(deviceId) + "/sections/" + encodeURIComponent(sid), { value: v, etag, desiredVersion: version });
      save.disabled = false;
      if (r.status === 412) {
        put(out, notice("warn", "Conflict (412 Precondition Failed): someone else changed this twin's desired properties since you started editing. Nothing was written. ",
          el("button", { type: "button", class: "reload", onclick: () => reload() }, "Reload the current desired value")));
        return;
      }
      if (!r.ok) {
        put(out, notice("error", r.data.error || "HTTP " + r.status, r.data.problems ? problemList(r.data.problems) : null));
        return;
      }
      put(out, notice("ok", "Saved: desired version " + r.data.desiredVersion + "."));
      setTimeout(close, 800);
    });

    function reload() {
      const s = getSec();
      const d = currentDevice();
      etag = d.etag;
      version = d.desiredVersion;
      value = s && s.desired !== undefined ? JSON.parse(JSON.stringify(s.desired)) : {};
      text.value = pretty(value);
      if (mode === "form") buildForm();
      node.querySelector("h3 .mono").textContent = "(desired version " + version + ")";
      put(out, notice("ok", "Reloaded at desired version " + version + ": edit and save again."));
      put(changed);
    }

    function twinChanged(d) {
      put(changed);
      if (d && d.desiredVersion !== version) changed.append(notice("warn", "The twin's desired properties changed since you started editing (version " + version + ", now " + d.desiredVersion + "); saving will be refused."));
    }

    return { node, twinChanged, focus: () => (mode === "form" ? (formBox.querySelector("input,select") || text) : text).focus() };
  }

  // ---- direct methods ----

  function methodsPanel(box, id) {
    const out = el("div", { class: "answer", "aria-live": "polite" });
    const provider = [];
    for (const s of info.sections) for (const m of s.methods || []) provider.push({ name: s.id + "." + m.name, m });
    const sel = el("select", { id: "method-name", "aria-label": "Provider method" },
      provider.map((p) => el("option", { value: p.name, title: p.m.description || "" }, p.name)),
      el("option", { value: "" }, "other…"));
    const other = el("input", { type: "text", id: "method-other", placeholder: "method name", "aria-label": "Method name", hidden: provider.length > 0 });
    sel.addEventListener("change", () => { other.hidden = sel.value !== ""; });
    const payload = el("textarea", { id: "method-payload", "aria-label": "Payload (JSON)", style: "min-height:4rem", placeholder: "payload (JSON), empty for none" });
    box.append(el("h2", {}, "Direct methods"),
      el("div", { class: "row", style: "margin:.5rem 0" },
        el("button", { type: "button", id: "m-reconcile", onclick: () => call("reconcile") }, "Reconcile"),
        el("button", { type: "button", id: "m-getPlan", onclick: () => call("getPlan") }, "Get plan"),
        el("button", { type: "button", id: "m-getStatus", onclick: () => call("getStatus") }, "Get status")),
      el("div", { class: "row" }, sel, other, el("button", { type: "button", id: "m-invoke", onclick: () => call(sel.value || other.value.trim(), true) }, "Invoke")),
      payload, out);

    async function call(name, withPayload) {
      if (!name) return;
      let p;
      if (withPayload && payload.value.trim()) {
        try { p = JSON.parse(payload.value); } catch (e) { put(out, notice("error", "Payload is not JSON: " + e.message)); return; }
        const pm = provider.find((x) => x.name === name);
        if (pm && pm.m.schema) {
          const problems = TwinSchema.validate(pm.m.schema, p);
          if (problems.length) { put(out, notice("error", "Not sent: the payload does not match " + name + "'s schema.", problemList(problems))); return; }
        }
      }
      put(out, notice("ok", "Calling " + name + "…"));
      const r = await api("POST", "/api/devices/" + encodeURIComponent(id) + "/methods/" + encodeURIComponent(name), p === undefined ? {} : { payload: p });
      if (!r.ok) { put(out, notice("error", name + ": " + (r.data.error || "HTTP " + r.status), r.data.problems ? problemList(r.data.problems) : null)); return; }
      const res = r.data;
      const kids = [el("h3", {}, name + " → status " + res.status)];
      if (name === "getPlan" && res.status < 300 && res.payload && res.payload.sections) kids.push(planDiff(res.payload));
      else kids.push(el("pre", { class: "method-answer" }, pretty(res.payload)));
      put(out, ...kids);
    }
  }

  // planDiff renders a dry run as a diff: each change a line, its before
  // and after as - and + lines.
  function planDiff(plan) {
    const box = el("div", { class: "diff", id: "plan-diff" });
    box.append(el("div", { class: "hdr" }, plan.pending ? plan.pending + " change(s) pending" : "Nothing to change"));
    for (const s of plan.sections) {
      if (!s.changes.length && !(s.errors && s.errors.length) && !s.message) continue;
      box.append(el("div", { class: "hdr" }, s.section));
      for (const c of s.changes) {
        const sym = c.action === "create" ? "+" : c.action === "delete" ? "-" : "~";
        box.append(el("div", { class: sym === "+" ? "add" : sym === "-" ? "del" : "chg" }, sym + " " + c.action + " " + c.item));
        if (c.before) for (const l of c.before.split("\n")) box.append(el("div", { class: "del" }, "    - " + l));
        if (c.after) for (const l of c.after.split("\n")) box.append(el("div", { class: "add" }, "    + " + l));
      }
      if (s.message) box.append(el("div", { class: "del" }, "  ! " + s.message));
      for (const e of s.errors || []) box.append(el("div", { class: "del" }, "  ! " + (e.pointer || "/") + ": " + e.message));
    }
    return box;
  }

  // ---- configurations ----

  function configsView(creating) {
    document.title = "Configurations · twinctl console";
    const status = el("div");
    const list = el("div", { id: "configs" });
    const create = el("div");
    main.append(el("h1", {}, "Configurations ", el("a", { href: "#/configs/new", class: "dim", style: "font-size:.9rem;font-weight:400" }, "+ new configuration")), status, create, list);
    if (creating) create.append(createForm());
    const cards = new Map();
    stream({ topic: "configs" }, (d) => {
      put(status);
      const ids = new Set(d.configs.map((c) => c.id));
      for (const [cid, c] of cards) if (!ids.has(cid)) { c.node.remove(); cards.delete(cid); }
      if (!d.configs.length) put(list, el("p", { class: "dim" }, "No configuration on this hub."));
      else if (list.firstChild && list.firstChild.tagName === "P") put(list);
      for (const c of d.configs) {
        let card = cards.get(c.id);
        if (!card) { card = configCard(); cards.set(c.id, card); }
        card.update(c);
      }
      const want = d.configs.map((c) => cards.get(c.id).node);
      if (want.some((n, i) => list.children[i] !== n)) keepFocus(() => list.append(...want));
    }, (err) => put(status, notice("error", err)));
  }

  function bar(p, label) {
    const total = Math.max(p.applied, p.expected, 1);
    const pct = (n) => (100 * n / total).toFixed(2) + "%";
    const rest = Math.max(0, p.applied - p.ready - p.failed - p.pending);
    return el("div", { class: "bar", role: "img", "aria-label": label + ": " + p.ready + " Ready, " + p.failed + " Failed, " + p.pending + " pending of " + total },
      el("span", { class: "ready", style: "width:" + pct(p.ready) }), el("span", { class: "failed", style: "width:" + pct(p.failed) }),
      el("span", { class: "pending", style: "width:" + pct(p.pending) }), el("span", { class: "applied", style: "width:" + pct(rest) }));
  }

  function counts(p) {
    return el("div", { class: "counts" },
      el("span", {}, "targeted ", el("b", {}, p.targeted), " of ", p.expected), el("span", {}, "applied ", el("b", {}, p.applied)),
      el("span", { class: "c-ready" }, "Ready ", el("b", {}, p.ready)), el("span", { class: "c-failed" }, "Failed ", el("b", {}, p.failed)),
      el("span", { class: "c-pending" }, "pending ", el("b", {}, p.pending)));
  }

  function configCard() {
    const node = el("section", { class: "card config" });
    let editing = false;
    let cfg = null;
    const body = el("div");
    const editBox = el("div");
    node.append(body, editBox);

    let lastKey = "";
    function update(c) {
      cfg = c;
      node.id = "config-" + c.id;
      const key = JSON.stringify([c, editing]);
      if (key === lastKey) return;
      lastKey = key;
      keepFocus(() => render(c));
    }

    function render(c) {
      const p = c.progress;
      const kids = [el("div", { class: "section-head" }, el("h2", {}, c.id), c.managed ? el("span", { class: "badge", title: "managed by twinctl apply" }, "GitOps " + c.name) : null,
        p && p.state ? badge(p.state) : null, p && p.reason ? el("span", { class: "msg" }, p.reason) : null, el("span", { class: "spacer" }),
        el("span", { class: "dim" }, "priority " + c.priority),
        el("button", { type: "button", id: "edit-config-" + c.id, onclick: () => edit(), disabled: editing, "aria-label": "Edit " + c.id }, "Edit"))];
      kids.push(el("div", { class: "mono dim", style: "margin:.3rem 0" }, "target: " + c.targetCondition), el("div", { class: "dim", style: "font-size:.88rem" }, "sections: " + (c.sections || []).join(", ")));
      if (c.error) kids.push(notice("error", c.error));
      if (p) {
        kids.push(counts(p));
        if (c.stages && c.stages.length) {
          const g = el("div", { class: "stages", "aria-label": "Rollout stages" });
          c.stages.forEach((st, i) => {
            let b, txt;
            if (st.state === "current") { b = bar(p, st.name); txt = p.ready + "/" + Math.max(p.applied, p.expected) + " Ready" + (st.minReady ? " (needs " + st.minReady + "%)" : ""); }
            else if (st.state === "done") { b = bar({ ready: 1, failed: 0, pending: 0, applied: 1, expected: 1 }, st.name + " done"); txt = "done"; }
            else { b = bar({ ready: 0, failed: 0, pending: 0, applied: 0, expected: 1 }, st.name + " waiting"); txt = "waiting"; }
            g.append(el("div", { class: "stage-name" }, (i + 1) + ". " + st.name, el("small", {}, st.target)), b, el("span", { class: "dim" }, txt));
          });
          kids.push(g);
          if (c.overMaxFailed) kids.push(notice("error", "Failures cross maxFailed " + c.maxFailed + ": twinctl rollout run halts this rollout here."));
          else if (c.maxFailed) kids.push(el("div", { class: "dim", style: "font-size:.85rem;margin-top:.3rem" }, "maxFailed " + c.maxFailed));
        } else {
          kids.push(el("div", { style: "margin-top:.4rem" }, bar(p, c.id)));
        }
      }
      put(body, ...kids);
    }

    function edit() {
      editing = true;
      update(cfg);
      const c = cfg;
      const target = el("input", { type: "text", id: "t-" + c.id, value: c.targetCondition, class: "grow" });
      const prio = el("input", { type: "number", id: "p-" + c.id, value: String(c.priority) });
      const own = Object.entries(c.labels || {}).filter(([k]) => !k.startsWith("twinlet-"));
      const labels = el("textarea", { id: "l-" + c.id, style: "min-height:3rem" });
      labels.value = own.map(([k, v]) => k + "=" + v).join("\n");
      const out = el("div", { "aria-live": "polite" });
      const etag = c.etag;
      const form = el("form", { class: "edit-form", onsubmit: async (e) => {
        e.preventDefault();
        const lab = parseLabels(labels.value);
        if (lab.error) { put(out, notice("error", lab.error)); return; }
        const r = await api("PUT", "/api/configs/" + encodeURIComponent(c.id), { etag, targetCondition: target.value, priority: Number(prio.value), labels: lab.value });
        if (r.status === 412) { put(out, notice("warn", "Conflict (412 Precondition Failed): the configuration changed since you opened it (a rollout moved it?). Nothing was written.", " ", el("button", { type: "button", onclick: () => { done(); edit(); } }, "Reload"))); return; }
        if (!r.ok) { put(out, notice("error", r.data.error || "HTTP " + r.status)); return; }
        done();
      } },
        el("h3", {}, "Edit " + c.id), el("p", { class: "dim", style: "font-size:.85rem" }, "The content of a configuration cannot change; the target condition, priority and labels can." + (c.managed ? " This one is managed by twinctl apply: the repository wins at the next apply." : "")),
        el("div", { class: "form-grid" }, el("label", { for: target.id }, "Target condition"), target, el("label", { for: prio.id }, "Priority"), prio,
          el("label", { for: labels.id }, "Labels (key=value lines)"), labels),
        out,
        el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, "Save"), el("button", { type: "button", onclick: () => done() }, "Cancel"),
          el("span", { class: "spacer" }), el("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm("Delete configuration " + c.id + "? Devices keep what it set but stop being managed by it.")) return;
            const r = await api("DELETE", "/api/configs/" + encodeURIComponent(c.id) + "?etag=" + encodeURIComponent(etag));
            if (!r.ok) { put(out, notice(r.status === 412 ? "warn" : "error", r.data.error || "HTTP " + r.status)); return; }
            done();
          } }, "Delete")));
      put(editBox, form);
      target.focus();
      function done() { editing = false; put(editBox); update(cfg); }
    }
    return { node, update };
  }

  function parseLabels(text) {
    const out = {};
    for (const [i, line] of text.split("\n").entries()) {
      const l = line.trim();
      if (!l) continue;
      const eq = l.indexOf("=");
      if (eq <= 0) return { error: "labels line " + (i + 1) + ": want key=value" };
      out[l.slice(0, eq).trim()] = l.slice(eq + 1).trim();
    }
    return { value: out };
  }

  function createForm() {
    const id = el("input", { type: "text", id: "new-id", class: "grow", placeholder: "site-berlin-timezone" });
    const target = el("input", { type: "text", id: "new-target", class: "grow", placeholder: "tags.site = 'berlin'" });
    const prio = el("input", { type: "number", id: "new-priority", value: "10" });
    const labels = el("textarea", { id: "new-labels", style: "min-height:3rem" });
    const sections = el("textarea", { id: "new-sections", placeholder: '{"timezone": {"name": "Europe/Berlin"}}' });
    const out = el("div", { "aria-live": "polite" });
    const form = el("form", { class: "card edit-form", onsubmit: async (e) => {
      e.preventDefault();
      let secs;
      try { secs = JSON.parse(sections.value || "{}"); } catch (err) { put(out, notice("error", "Sections: not JSON: " + err.message)); return; }
      if (typeof secs !== "object" || secs === null || Array.isArray(secs)) { put(out, notice("error", "Sections: want an object of section → value")); return; }
      const problems = [];
      for (const [sid, v] of Object.entries(secs)) {
        const schema = await schemaFor(sid);
        if (!schema) { problems.push({ pointer: "/" + sid, message: "no writable section of that name" }); continue; }
        for (const p of TwinSchema.validate(schema, v)) problems.push({ pointer: "/" + sid + p.pointer, message: p.message });
      }
      if (problems.length) { put(out, notice("error", "Not sent:", problemList(problems))); return; }
      const lab = parseLabels(labels.value);
      if (lab.error) { put(out, notice("error", lab.error)); return; }
      const r = await api("POST", "/api/configs", { id: id.value.trim(), targetCondition: target.value, priority: Number(prio.value), labels: lab.value, sections: secs });
      if (!r.ok) { put(out, notice("error", r.data.error || "HTTP " + r.status, r.data.problems ? problemList(r.data.problems) : null)); return; }
      location.hash = "#/configs";
    } },
      el("h2", {}, "New configuration"),
      el("div", { class: "form-grid" }, el("label", { for: "new-id" }, "Id"), id, el("label", { for: "new-target" }, "Target condition"), target,
        el("label", { for: "new-priority" }, "Priority"), prio, el("label", { for: "new-labels" }, "Labels (key=value lines)"), labels,
        el("label", { for: "new-sections" }, "Sections (JSON)"), sections),
      out, el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, "Validate and create"), el("a", { href: "#/configs" }, "Cancel")));
    setTimeout(() => id.focus(), 0);
    return form;
  }

  // ---- start ----
  api("GET", "/api/info").then((r) => {
    if (r.ok) {
      info = r.data;
      document.getElementById("hub").textContent = info.hub;
    }
    window.addEventListener("hashchange", () => {
      route();
      main.focus({ preventScroll: true }); // the keyboard starts at the new view
    });
    route();
  });
})();
