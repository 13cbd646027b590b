// Chat messages recognised in a run's inputs or outputs: pure functions, no DOM, so the browser
// test can call them through the page (ChatMessages.recognize) as well as see what chat.js draws.
//
// recognize(value) -> null, or an array of turns {role, name, parts, toolCalls, toolCallId}:
//   role       "system" | "user" | "assistant" | "tool" | "function" | another role the SDK named
//   parts      [{kind: "text", text} | {kind: "reasoning", text} | {kind: "image", url}
//               | {kind: "tool_result", id, content} | {kind: "json", value}]
//   toolCalls  [{id, name, args}]  (args: the arguments as sent, a string or an object)
// Shapes: OpenAI chat (messages, choices, legacy function_call, completions' text), Anthropic
// (system + messages of content blocks, a message reply), LangChain (lc-serialised messages,
// {type, data} message dicts, {type, content} dicts, generations), OpenTelemetry GenAI
// (messages of parts) and OpenInference (message wrappers, flattened "message.role" keys).
// Anything else (or any message of a list that is not one) gives null: the caller shows JSON.
"use strict";
const ChatMessages = (() => {
  const ROLES = { human: "user", user: "user", ai: "assistant", assistant: "assistant", model: "assistant",
    bot: "assistant", system: "system", developer: "system", tool: "tool", function: "function", chat: null,
    generic: null };
  const LC_CLASSES = { HumanMessage: "human", AIMessage: "ai", SystemMessage: "system", ToolMessage: "tool",
    FunctionMessage: "function", ChatMessage: "chat", RemoveMessage: null };
  const LIST_KEYS = ["messages", "input_messages", "output_messages", "llm.input_messages", "llm.output_messages",
    "gen_ai.input.messages", "gen_ai.output.messages", "prompt", "input", "output", "outputs", "message", "messages_in"];

  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

  function role(name) {
    if (typeof name !== "string" || !name) return null;
    const known = ROLES[name.toLowerCase()];
    return known === undefined ? null : known;
  }

  // OpenInference flattened attributes: {"message.role": "user", "message.content": "hi"}.
  function unflatten(m) {
    const keys = Object.keys(m);
    if (!keys.length || !keys.every((k) => k.startsWith("message."))) return m;
    const out = {};
    for (const k of keys) {
      let node = out;
      const path = k.slice("message.".length).split(".");
      path.forEach((p, i) => {
        const key = /^[0-9]+$/.test(p) ? Number(p) : p;
        if (i === path.length - 1) node[key] = m[k];
        else node = node[key] = node[key] || (/^[0-9]+$/.test(path[i + 1]) ? [] : {});
      });
    }
    return out;
  }

  // Lists that flattened attributes rebuilt as objects keyed "0", "1", ... (OpenInference over OTLP).
  function indexed(v) {
    if (Array.isArray(v)) return v;
    if (!isObject(v)) return null;
    const keys = Object.keys(v);
    if (!keys.every((k) => /^[0-9]+$/.test(k))) return null;
    return keys.sort((a, b) => a - b).map((k) => v[k]);
  }

  function toolCall(c) {
    if (!isObject(c)) return null;
    if (isObject(c.tool_call)) c = c.tool_call; // OpenInference
    if (isObject(c.function)) { // OpenAI (and LangChain's additional_kwargs)
      if (typeof c.function.name !== "string") return null;
      return { id: c.id || null, name: c.function.name, args: c.function.arguments ?? null };
    }
    if (typeof c.name !== "string") return null;
    return { id: c.id || null, name: c.name, args: c.args ?? c.arguments ?? c.input ?? null };
  }

  function part(p) {
    if (typeof p === "string") return { kind: "text", text: p };
    if (!isObject(p)) return { kind: "json", value: p };
    const type = p.type;
    if ((type === "text" || type === "input_text" || type === "output_text" || type === undefined) && typeof p.text === "string")
      return { kind: "text", text: p.text };
    if (type === "text" && typeof p.content === "string") return { kind: "text", text: p.content }; // GenAI
    if (type === "thinking" && typeof p.thinking === "string") return { kind: "reasoning", text: p.thinking };
    if (type === "reasoning" && typeof p.content === "string") return { kind: "reasoning", text: p.content };
    if (type === "image_url") return { kind: "image", url: isObject(p.image_url) ? p.image_url.url : p.image_url };
    if (type === "image" || type === "input_image" || type === "blob" || type === "uri")
      return { kind: "image", url: p.url || p.uri || (isObject(p.source) ? p.source.url || "(inline " + (p.source.media_type || "data") + ")" : null) };
    if (type === "tool_result") return { kind: "tool_result", id: p.tool_use_id || null, content: p.content ?? null };
    if (type === "tool_call_response") return { kind: "tool_result", id: p.id || null, content: p.response ?? p.result ?? null };
    return { kind: "json", value: p };
  }

  // Tool-call blocks inside content (Anthropic tool_use, GenAI tool_call) become the turn's calls.
  function content(value, calls) {
    if (value === null || value === undefined) return [];
    if (typeof value === "string") return value ? [{ kind: "text", text: value }] : [];
    if (!Array.isArray(value)) return null;
    const parts = [];
    for (const p of value) {
      if (isObject(p) && (p.type === "tool_use" || p.type === "tool_call")) {
        const call = toolCall(p);
        if (!call) return null;
        calls.push(call);
      } else {
        parts.push(part(p));
      }
    }
    return parts;
  }

  function message(m) {
    if (!isObject(m)) return null;
    m = unflatten(m);
    let kind = null;
    let body = m;
    if (m.lc !== undefined && Array.isArray(m.id) && isObject(m.kwargs)) { // LangChain, serialised
      const cls = String(m.id[m.id.length - 1]).replace(/Chunk$/, "");
      kind = LC_CLASSES[cls];
      if (kind === undefined || kind === null) return null;
      body = m.kwargs;
    } else if (typeof m.type === "string" && isObject(m.data) && !("role" in m)) { // messages_to_dict
      kind = m.type;
      body = m.data;
    } else if (isObject(m.message) && !("role" in m) && !("content" in m)) { // a choice, an OpenInference wrapper
      return message(m.message);
    } else if (!("role" in m) && typeof m.text === "string" && ("finish_reason" in m || "index" in m)) { // completions
      return { role: "assistant", name: null, parts: [{ kind: "text", text: m.text }], toolCalls: [], toolCallId: null };
    }
    const name = role(body.role) || role(kind === "chat" ? body.role : kind) || role(typeof body.type === "string" ? body.type : null);
    if (!name) return null;
    const calls = [];
    let raw = "content" in body ? body.content : "parts" in body ? body.parts : undefined;
    if (raw === undefined && "contents" in body) { // OpenInference: contents.N.message_content
      raw = indexed(body.contents);
      if (raw === null) return null;
      raw = raw.map((c) => (isObject(c) && isObject(c.message_content) ? c.message_content : c));
    }
    const parts = content(raw, calls);
    if (parts === null) return null;
    const extra = indexed(body.tool_calls || (isObject(body.additional_kwargs) && body.additional_kwargs.tool_calls) || []);
    if (!extra) return null;
    for (const c of extra) {
      const call = toolCall(c);
      if (!call) return null;
      if (!calls.some((k) => k.id && k.id === call.id)) calls.push(call);
    }
    const legacy = body.function_call || (isObject(body.additional_kwargs) && body.additional_kwargs.function_call);
    if (isObject(legacy) && typeof legacy.name === "string") calls.push({ id: null, name: legacy.name, args: legacy.arguments ?? null });
    if (raw === undefined && !calls.length) return null; // a role alone is not a message
    return { role: name, name: typeof body.name === "string" ? body.name : null, parts, toolCalls: calls,
      toolCallId: typeof body.tool_call_id === "string" ? body.tool_call_id : null };
  }

  function list(items) {
    if (!Array.isArray(items) || !items.length) return null;
    if (items.every(Array.isArray)) items = items.flat(); // LangChain batches: [[message, ...]]
    const turns = [];
    for (const item of items) {
      const turn = message(isObject(item) && Array.isArray(item.generations) ? null : item);
      if (!turn) return null;
      turns.push(turn);
    }
    return turns;
  }

  // LangChain outputs: {generations: [[{text, message}]]}.
  function generations(value) {
    let gens = value.generations;
    if (!Array.isArray(gens) || !gens.length) return null;
    if (gens.every(Array.isArray)) gens = gens.flat();
    const turns = [];
    for (const g of gens) {
      if (!isObject(g)) return null;
      const turn = g.message ? message(g.message) : typeof g.text === "string" ? message({ role: "assistant", content: g.text }) : null;
      if (!turn) return null;
      turns.push(turn);
    }
    return turns;
  }

  function recognize(value) {
    if (typeof value === "string") {
      try { value = JSON.parse(value); } catch (e) { return null; } // GenAI attributes carry JSON text
      if (typeof value === "string") return null;
    }
    if (Array.isArray(value)) return list(value);
    if (!isObject(value)) return null;
    if (indexed(value) && Object.keys(value).length) return list(indexed(value));
    if (Array.isArray(value.choices)) return list(value.choices);
    if (value.generations) return generations(value);
    const single = message(value);
    if (single && (value.role || value.lc !== undefined || value.type)) return [single]; // one reply
    for (const key of LIST_KEYS) {
      if (!(key in value)) continue;
      const inner = value[key];
      const turns = Array.isArray(inner) ? list(inner)
        : isObject(inner) || typeof inner === "string" ? recognize(inner) : null;
      if (!turns) continue;
      if (key === "messages" && value.system !== undefined) { // Anthropic's system prompt beside its messages
        const system = content(value.system, []);
        if (system === null) return null;
        turns.unshift({ role: "system", name: null, parts: system, toolCalls: [], toolCallId: null });
      }
      return turns;
    }
    return null;
  }

  return { recognize, message };
})();
