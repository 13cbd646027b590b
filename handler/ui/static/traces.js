// The traces page: a project's recent root runs, filtered and paged.
"use strict";
(() => {
  const { api, guarded, message, el, duration, when } = UI;
  const picker = document.getElementById("project");
  const status = document.getElementById("status");
  const name = document.getElementById("name");
  const filter = document.getElementById("filter");
  const filterError = document.getElementById("filter-error");
  const body = document.querySelector("#traces tbody");
  const newer = document.getElementById("newer");
  const older = document.getElementById("older");
  const params = new URLSearchParams(location.search);
  let cursors = [""]; // the cursor of each page shown so far: Newer goes back one
  let next = null;

  async function loadProjects() {
    const projects = await api("sessions?limit=100");
    picker.replaceChildren(...projects.map((p) => el("option", { value: p.id, text: p.name })));
    if (!projects.length) { message("No projects yet: trace something first."); return; }
    const wanted = params.get("project");
    if (wanted && projects.some((p) => p.id === wanted)) picker.value = wanted;
    // A shared link (?project=&status=&name=&filter=&cursor=) opens the list it was copied from.
    status.value = params.get("status") || "";
    name.value = params.get("name") || "";
    filter.value = params.get("filter") || "";
    await loadPage(params.get("cursor") ? ["", params.get("cursor")] : [""]);
  }

  // The URL names the list shown (never the key): copy it to share it.
  function remember(cursor) {
    const link = new URLSearchParams({ project: picker.value });
    if (status.value) link.set("status", status.value);
    if (name.value.trim()) link.set("name", name.value.trim());
    if (filter.value.trim()) link.set("filter", filter.value.trim());
    if (cursor) link.set("cursor", cursor);
    history.replaceState(null, "", "?" + link);
    const monitor = document.getElementById("monitor-link");
    monitor.href = "ui/projects/" + picker.value + "/monitor";
    monitor.hidden = !picker.value;
  }

  // The filter's mistake (the server's 400, with its position) beside the box; the list stays.
  function showFilterError(text) {
    filterError.textContent = text || "";
    filter.setAttribute("aria-invalid", text ? "true" : "false");
    const at = /position (\d+)/.exec(text || "");
    if (at) filter.setSelectionRange(Number(at[1]), Number(at[1]));
  }

  // ``wanted``: the cursors of the pages up to the one to show; kept only once it is shown.
  async function loadPage(wanted = cursors) {
    const query = new URLSearchParams({ session: picker.value });
    if (status.value) query.set("status", status.value);
    if (name.value.trim()) query.set("name", name.value.trim());
    if (filter.value.trim()) query.set("filter", filter.value.trim());
    const cursor = wanted[wanted.length - 1];
    if (cursor) query.set("cursor", cursor);
    let page;
    try {
      page = await api("ui/api/traces?" + query);
    } catch (error) {
      if (error.status === 400 && filter.value.trim() && error.message.startsWith("filter:")) {
        showFilterError(error.message);
        return;
      }
      throw error;
    }
    showFilterError("");
    cursors = wanted;
    remember(cursor);
    next = page.next_cursor;
    // Tokens and feedback: columns the server sends once it stores them.
    const columns = page.columns || [];
    for (const th of document.querySelectorAll("#traces th[data-column]")) th.hidden = !columns.includes(th.dataset.column);
    body.replaceChildren(...page.traces.map((trace) => row(trace, columns)));
    message(page.traces.length ? "" : "No traces match.");
    newer.disabled = cursors.length < 2;
    older.disabled = !next;
  }

  function optional(trace, name) {
    const value = trace[name];
    if (value === null || value === undefined) return el("td", { class: name });
    if (name === "feedback") return el("td", { class: name, text: Object.entries(value).map(([k, v]) => k + " " + v).join(", ") });
    return el("td", { class: name + " count", text: Number(value).toLocaleString() });
  }

  function row(trace, columns) {
    const link = el("a", { href: "ui/trace/" + trace.trace_id + "?project=" + picker.value, text: trace.name });
    const state = el("span", { class: "status status-" + trace.status, text: trace.status });
    const tr = el("tr", { "data-trace-id": trace.trace_id },
      el("td", {}, link), el("td", { text: when(trace.start_time) }),
      el("td", { class: "latency", "data-ms": trace.latency_ms === null ? "" : String(trace.latency_ms), text: duration(trace.start_time, trace.end_time) }),
      el("td", {}, state), el("td", { class: "count", text: String(trace.run_count) }),
      el("td", { class: "input-preview", title: trace.input || "", text: trace.input || "" }),
      ...columns.map((name) => optional(trace, name)));
    if (trace.error) tr.title = trace.error;
    return tr;
  }

  function restart() { guarded(() => loadPage([""])); }
  picker.addEventListener("change", restart);
  document.getElementById("apply").addEventListener("click", restart);
  name.addEventListener("keydown", (e) => { if (e.key === "Enter") restart(); });
  filter.addEventListener("keydown", (e) => { if (e.key === "Enter") restart(); });
  status.addEventListener("change", restart);
  older.addEventListener("click", () => { const to = [...cursors, next]; guarded(() => loadPage(to)); });
  newer.addEventListener("click", () => { const to = cursors.slice(0, -1); guarded(() => loadPage(to)); });
  guarded(loadProjects);
})();
