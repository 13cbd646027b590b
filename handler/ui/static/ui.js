// Shared by the viewer's pages: API calls with the tab's key, the key prompt, small formatters.
"use strict";
const UI = (() => {
  const root = document.body.dataset.root || "./";
  const KEY = "run-handler.api-key";
  const form = document.getElementById("key-form");
  const forget = document.getElementById("forget-key");
  let retry = null; // what to run again once a key is given

  function key() { return sessionStorage.getItem(KEY); }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (key()) headers["x-api-key"] = key();  // a header, never a URL parameter
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options = Object.assign({}, options, { method: "POST", body: JSON.stringify(options.json) });
    }
    const response = await fetch(root + path, Object.assign({}, options, { headers }));
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : response.status + " " + response.statusText;
      throw new ApiError(response.status, message);
    }
    return body === null ? text : body;
  }

  // Runs ``load``; on a 401 asks for a key, then runs it again.
  async function guarded(load) {
    try {
      await load();
    } catch (error) {
      if (error.status === 401) {
        retry = load;
        form.hidden = false;
        document.getElementById("key-error").textContent = key() ? "That key was refused." : "";
        document.getElementById("key-input").focus();
      } else {
        message("Error: " + error.message, true);
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
    form.hidden = true;
    showKeyState();
    if (retry) guarded(retry);
  });
  forget.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });

  function showKeyState() { forget.hidden = !key(); }

  function message(text, isError) {
    const el = document.getElementById("message");
    el.textContent = text || "";
    el.classList.toggle("error-text", !!isError);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function duration(start, end) {
    if (!start || !end) return "";
    const ms = new Date(end) - new Date(start);
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(2) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }

  function when(time) { return time ? new Date(time).toLocaleString() : ""; }

  showKeyState();
  return { api, guarded, message, el, duration, when, root };
})();
