// The LangSmith JavaScript SDK's createFeedback against run-handler, driven by
// tests/test_js_feedback.py.
//
//   node feedback.mjs        (API_URL and API_KEY in the environment)
//
// A traced pipeline records feedback while it runs: with a traceId (queued by the SDK and sent as
// a feedback.<id> part of /runs/multipart, beside the runs) and without one (POST /feedback).
// Prints one JSON object: the run and feedback ids, every request the SDK made (method, path,
// status), what listFeedback and readFeedback gave back, and whatever the SDK logged as an error
// or a warning.
import { Client } from "langsmith";
import { getCurrentRunTree, traceable } from "langsmith/traceable";

const requests = [];
const logged = [];
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => {
    logged.push(args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : String(a))).join(" "));
    original(...args);
  };
}

async function recordingFetch(url, init = {}) {
  const entry = { method: init.method ?? "GET", path: new URL(url).pathname, status: null };
  requests.push(entry);
  const response = await fetch(url, init);
  entry.status = response.status;
  return response;
}

const client = new Client({
  apiUrl: process.env.API_URL,
  apiKey: process.env.API_KEY,
  fetchImplementation: recordingFetch,
});
const projectName = `js-feedback-${Date.now()}`;
const project = await client.createProject({ projectName });
const ids = { feedback: {} };

const step = traceable(
  async (text) => {
    ids.step = getCurrentRunTree().id;
    return text.toUpperCase();
  },
  { name: "step", run_type: "llm" },
);
const pipeline = traceable(
  async (text) => {
    const tree = getCurrentRunTree();
    ids.root = tree.id;
    const out = await step(text);
    // With traceId: batched with the runs (multipart). Without: POST /feedback, now.
    ids.feedback.batched = (
      await client.createFeedback(ids.step, "correctness", {
        score: 1,
        traceId: tree.trace_id,
        comment: "batched",
        sessionId: project.id,
      })
    ).id;
    ids.feedback.direct = (
      await client.createFeedback(ids.root, "helpfulness", {
        score: 0.5,
        value: "somewhat",
        sessionId: project.id,
      })
    ).id;
    return out;
  },
  { name: "pipeline", run_type: "chain", client, project_name: projectName, tracingEnabled: true },
);

await pipeline("hello feedback");
await client.awaitPendingTraceBatches();

const listed = [];
for await (const feedback of client.listFeedback({ runIds: [ids.root, ids.step] })) {
  listed.push({ id: feedback.id, run_id: feedback.run_id, key: feedback.key, score: feedback.score });
}
const read = await client.readFeedback(ids.feedback.direct);
process.stdout.write(
  `${JSON.stringify({ ids, project: project.id, requests, listed, read, logged })}\n`,
);
