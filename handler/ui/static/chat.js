// Draws the turns ChatMessages.recognize found as a chat, with a toggle back to the raw JSON.
// ChatView.section(value, tools) returns an element, or null when the value is not a chat; any
// error while drawing also gives null, so the caller shows its JSON tree and the page keeps working.
"use strict";
const ChatView = (() => {
  const { el } = UI;

  function args(value) {
    if (typeof value === "string") {
      try { return JSON.stringify(JSON.parse(value), null, 2); } catch (e) { return value; }
    }
    return JSON.stringify(value, null, 2);
  }

  function partNode(part, tools) {
    switch (part.kind) {
      case "text": return tools.longText(part.text, "chat-text");
      case "reasoning": return el("div", { class: "chat-reasoning" }, el("span", { class: "chat-label", text: "thinking" }), tools.longText(part.text, "chat-text"));
      case "image": return el("div", { class: "chat-image", text: "[image" + (part.url ? ": " + String(part.url).slice(0, 200) : "") + "]" });
      case "tool_result": return el("div", { class: "chat-tool-result" },
        el("span", { class: "chat-label", text: "result" + (part.id ? " of " + part.id : "") }),
        typeof part.content === "string" ? tools.longText(part.content, "chat-text") : tools.json(part.content));
      default: return tools.json(part.value);
    }
  }

  function turn(t, tools) {
    const head = el("div", { class: "chat-role", text: t.role + (t.name ? " · " + t.name : "") + (t.toolCallId ? " · " + t.toolCallId : "") });
    const node = el("div", { class: "chat-turn chat-" + t.role.replace(/[^a-z0-9_-]/gi, ""), "data-role": t.role }, head);
    for (const part of t.parts) node.append(partNode(part, tools));
    for (const call of t.toolCalls) {
      node.append(el("div", { class: "chat-tool-call", "data-tool": call.name },
        el("span", { class: "chat-label", text: "calls " }), el("code", { class: "chat-tool-name", text: call.name }),
        call.id ? el("span", { class: "chat-tool-id", text: " " + call.id }) : "",
        tools.longText(args(call.args), "chat-args")));
    }
    return node;
  }

  function draw(turns, tools) {
    return el("div", { class: "chat", "data-turns": String(turns.length) }, ...turns.map((t) => turn(t, tools)));
  }

  // A field's body: the chat, and a button that swaps it with the JSON tree (built on first use).
  function section(value, tools) {
    let chat;
    try {
      const turns = ChatMessages.recognize(value);
      if (!turns) return null;
      chat = draw(turns, tools);
    } catch (error) {
      console.warn("chat view: falling back to JSON", error);
      return null;
    }
    const box = el("div", { class: "chat-box" });
    const toggle = el("button", { type: "button", class: "chat-toggle", text: "Raw JSON" });
    let raw = null;
    toggle.addEventListener("click", () => {
      const showingChat = chat.isConnected;
      if (showingChat && !raw) raw = tools.json(value);
      (showingChat ? chat : raw).replaceWith(showingChat ? raw : chat);
      toggle.textContent = showingChat ? "Chat" : "Raw JSON";
    });
    box.append(toggle, chat);
    return box;
  }

  return { section };
})();
