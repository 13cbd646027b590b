// Node's fetch streams a body (duplex: "half") that the server refuses at its first run, and
// keeps sending: it must get the JSON answer, not ECONNRESET. Prints {status, body} or {error}.
//
//   node early_answer.mjs    (API_URL, API_KEY and TOTAL_BYTES in the environment)
const total = Number(process.env.TOTAL_BYTES ?? 2 * 1024 * 1024);
const encoder = new TextEncoder();
const bad = JSON.stringify({ trace_id: crypto.randomUUID(), name: "bad", end_time: -1 });
const good = JSON.stringify({ trace_id: crypto.randomUUID(), name: "good", inputs: { t: "x".repeat(60_000) } });
let sent = 0;
const body = new ReadableStream({
  start(controller) {
    controller.enqueue(encoder.encode(`[${bad}`));
  },
  pull(controller) {
    if (sent >= total) {
      controller.enqueue(encoder.encode("]"));
      controller.close();
      return;
    }
    const chunk = encoder.encode(`,${good}`);
    sent += chunk.byteLength;
    controller.enqueue(chunk);
  },
});
try {
  const response = await fetch(`${process.env.API_URL}/runs`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "x-api-key": process.env.API_KEY },
    body,
    duplex: "half",
  });
  process.stdout.write(`${JSON.stringify({ status: response.status, body: await response.json() })}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ error: `${e.name}: ${e.message} ${e.cause?.code ?? ""}` })}\n`);
}
