// The trace page: the run tree as a waterfall; a selected run's inputs, outputs, metadata, error
// and feedback.
"use strict";
(() => {
  const { api, guarded, message, el, duration, when } = UI;
  const traceId = document.body.dataset.traceId;
  const MAX_RUNS = 5000;
  const SELECT = ["id", "name", "run_type", "start_time", "end_time", "trace_id", "parent_run_id",
    "dotted_order", "status", "error", "session_id"];
  const rowsEl = document.getElementById("rows");
  let selected = null;

  async function load() {
    const runs = [];
    let cursor = null;
    do {
      const body = { trace: traceId, select: SELECT, limit: 100 };
      if (cursor) body.cursor = cursor;
      const page = await api("runs/query", { json: body });
      runs.push(...page.runs);
      cursor = page.cursors.next;
    } while (cursor && runs.length < MAX_RUNS);
    if (!runs.length) { message("No runs in this trace (or not this key's)."); return; }
    if (cursor) message("Showing the first " + runs.length + " runs.");
    draw(runs);
  }

  function tree(runs) {
    const byId = new Map(runs.map((r) => [r.id, Object.assign(r, { children: [] })]));
    const roots = [];
    for (const run of runs) {
      const parent = run.parent_run_id && byId.get(run.parent_run_id);
      (parent ? parent.children : roots).push(run);
    }
    const order = (a, b) => (a.dotted_order || a.start_time || "").localeCompare(b.dotted_order || b.start_time || "");
    const flat = [];
    const walk = (run, depth) => {
      flat.push([run, depth]);
      run.children.sort(order).forEach((c) => walk(c, depth + 1));
    };
    roots.sort(order).forEach((r) => walk(r, 0));
    return flat;
  }

  function draw(runs) {
    const times = runs.flatMap((r) => [r.start_time, r.end_time]).filter(Boolean).map((t) => new Date(t).getTime());
    const t0 = Math.min(...times);
    const span = Math.max(Math.max(...times) - t0, 1);
    document.getElementById("axis").replaceChildren(
      el("span", { text: "0 ms" }), el("span", { text: duration(new Date(t0).toISOString(), new Date(t0 + span).toISOString()) }));
    const rows = tree(runs).map(([run, depth]) => {
      const start = run.start_time ? new Date(run.start_time).getTime() : t0;
      const end = run.end_time ? new Date(run.end_time).getTime() : t0 + span;
      const bar = el("div", { class: "bar status-" + run.status, title: duration(run.start_time, run.end_time) });
      bar.style.left = ((start - t0) / span * 100) + "%";
      bar.style.width = Math.max((end - start) / span * 100, 0.4) + "%";
      const label = el("div", { class: "label" },
        el("span", { class: "run-name", text: run.name }), el("span", { class: "run-type", text: run.run_type || "" }),
        el("span", { class: "run-duration", text: duration(run.start_time, run.end_time) }));
      label.style.paddingLeft = (depth * 18 + 6) + "px";
      if (run.error) label.append(el("div", { class: "run-error error-text", text: run.error.split("\n")[0].slice(0, 200) }));
      const row = el("div", { class: "run-row status-row-" + run.status, "data-run-id": run.id, "data-depth": String(depth), tabindex: "0" },
        label, el("div", { class: "track" }, bar));
      row.addEventListener("click", () => guarded(() => select(run, row)));
      row.addEventListener("keydown", (e) => { if (e.key === "Enter") guarded(() => select(run, row)); });
      return row;
    });
    rowsEl.replaceChildren(...rows);
    // The run named in the URL (?run=, a shared link), else the root.
    const wanted = new URLSearchParams(location.search).get("run");
    const first = rows.find((r) => r.dataset.runId === wanted) || rows[0];
    if (first) first.click();
  }

  // j / k: the next / previous run of the trace, as in a mail reader.
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (e.key !== "j" && e.key !== "k") return;
    const next = selected && (e.key === "j" ? selected.nextElementSibling : selected.previousElementSibling);
    if (!next) return;
    next.click();
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  });

  async function select(run, row) {
    if (selected) selected.classList.remove("selected");
    selected = row;
    row.classList.add("selected");
    const link = new URLSearchParams(location.search);
    link.set("run", run.id); // the page's URL names the selected run: copy it to share it
    history.replaceState(null, "", "?" + link);
    const detail = document.getElementById("detail");
    detail.hidden = false;
    document.getElementById("detail-title").textContent = run.name;
    const facts = [["Status", run.status], ["Type", run.run_type], ["Start", when(run.start_time)],
      ["Duration", duration(run.start_time, run.end_time)], ["Run id", run.id]];
    document.getElementById("detail-facts").replaceChildren(
      ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v || "" })]));
    const bodyEl = document.getElementById("detail-body");
    bodyEl.replaceChildren(el("p", { text: "Loading…" }));
    const [stored, feedback] = await Promise.all([api("runs/" + run.id), api("feedback?limit=100&run=" + run.id)]);
    if (selected !== row) return;
    const sections = [["Error", stored.error], ["Inputs", stored.inputs], ["Outputs", stored.outputs],
      ["Metadata", (stored.extra || {}).metadata], ["Tags", stored.tags]];
    bodyEl.replaceChildren(...sections.filter(([, v]) => v !== undefined && v !== null).map(([title, value]) =>
      el("section", { class: "field field-" + title.toLowerCase() }, el("h3", { text: title }), field(title, value))));
    if (feedback.length) bodyEl.prepend(feedbackSection(feedback));
  }

  // Inputs and outputs that hold messages show as a chat (ChatView); anything else as JSON.
  function field(title, value) {
    const tools = { longText, json: (v) => JsonView.render(v) };
    const chat = (title === "Inputs" || title === "Outputs") && ChatView.section(value, tools);
    if (chat) return chat;
    return typeof value === "string" ? longText(value, "error-block") : JsonView.render(value);
  }

  // The run's feedback, newest first: key, score or value, comment (the first 100).
  function feedbackSection(feedback) {
    const shown = (f) => f.score !== null ? String(f.score)
      : f.value === null ? "" : typeof f.value === "string" ? f.value : JSON.stringify(f.value);
    const rows = feedback.map((f) => el("tr", { class: "feedback-row", "data-key": f.key },
      el("td", { class: "feedback-key", text: f.key }), el("td", { class: "feedback-score", text: shown(f) }),
      el("td", { class: "feedback-comment", text: f.comment || "" })));
    const head = el("tr", {}, el("th", { text: "Key" }), el("th", { text: "Score / value" }), el("th", { text: "Comment" }));
    return el("section", { class: "field field-feedback" }, el("h3", { text: "Feedback" }),
      el("table", { class: "feedback-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  // Long text shows its start; the rest on request, so a huge value never freezes the page.
  function longText(text, cls) {
    const LIMIT = 2000;
    const pre = el("pre", { class: cls || "" });
    if (text.length <= LIMIT) { pre.textContent = text; return pre; }
    pre.textContent = text.slice(0, LIMIT);
    const more = el("button", { type: "button", class: "more", text: "show all " + text.length.toLocaleString() + " characters" });
    more.addEventListener("click", () => { pre.textContent = text; more.remove(); });
    return el("div", {}, pre, more);
  }

  // JSON as a tree: objects and arrays collapse (children are built only when opened), long
  // strings are cut, and long lists show their first items.
  const JsonView = {
    STRING: 300, ITEMS: 100,
    render(value) { return el("div", { class: "json" }, this.node(value, 0)); },
    node(value, depth) {
      if (value === null || typeof value !== "object") return this.leaf(value);
      const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
      const summary = Array.isArray(value) ? "[" + entries.length + " items]" : "{" + entries.length + " keys}";
      const details = el("details", {}, el("summary", { text: summary }));
      let built = false;
      const build = () => {
        if (built) return;
        built = true;
        const list = el("div", { class: "json-children" });
        const show = (from) => {
          for (const [k, v] of entries.slice(from, from + this.ITEMS)) {
            list.append(el("div", { class: "json-entry" }, el("span", { class: "json-key", text: k + ": " }), this.node(v, depth + 1)));
          }
          if (entries.length > from + this.ITEMS) {
            const more = el("button", { type: "button", class: "more", text: "show " + Math.min(this.ITEMS, entries.length - from - this.ITEMS) + " more" });
            more.addEventListener("click", () => { more.remove(); show(from + this.ITEMS); });
            list.append(more);
          }
        };
        show(0);
        details.append(list);
      };
      details.addEventListener("toggle", () => { if (details.open) build(); });
      if (depth < 4 && entries.length <= 50) { details.open = true; build(); }
      return details;
    },
    leaf(value) {
      if (typeof value !== "string") return el("span", { class: "json-" + (value === null ? "null" : typeof value), text: JSON.stringify(value) });
      if (value.length <= this.STRING) return el("span", { class: "json-string", text: JSON.stringify(value) });
      const span = el("span", { class: "json-string", text: JSON.stringify(value.slice(0, this.STRING)) + "…" });
      const more = el("button", { type: "button", class: "more", text: "show all " + value.length.toLocaleString() + " characters" });
      more.addEventListener("click", () => {
        span.replaceChildren(el("pre", { class: "json-long", text: value }));
        more.remove();
      });
      return el("span", {}, span, more);
    },
  };

  guarded(load);
})();
