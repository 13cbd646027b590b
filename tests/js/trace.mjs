// The LangSmith JavaScript SDK, pointed at run-handler, driven by tests/test_js_sdk.py.
//
//   node trace.mjs SCENARIO MODE      (API_URL and API_KEY in the environment)
//
// SCENARIO: "traceable" (a nested pipeline: an LLM step, a tool that throws, a 500 KB input) or
// "runtree" (a root and a child posted, flushed, then ended and patched in a later flush).
// MODE, how the SDK sends: "multipart-gzip" (what it picks from our /info on Node 20: gzip, as
// zstd needs Node 22.15), "multipart-stream" (LANGSMITH_DISABLE_RUN_COMPRESSION=true: a streamed,
// chunked multipart body), "batch" (/info without use_multipart_endpoint: POST /runs/batch) or
// "unbatched" (autoBatchTracing: false: POST /runs and PATCH /runs/{id}).
//
// Prints one JSON object: the ids of the runs, every request the SDK made (method, path, headers
// that matter, status) and whatever the SDK logged as an error or warning.
import { Client } from "langsmith";
import { RunTree } from "langsmith/run_trees";
import { getCurrentRunTree, traceable } from "langsmith/traceable";

const [scenario, mode] = process.argv.slice(2);
const requests = [];
const logged = [];
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => {
    logged.push(args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : String(a))).join(" "));
    original(...args);
  };
}

// A fetch that records each request, and for "batch" answers /info as a server without multipart.
async function recordingFetch(url, init = {}) {
  const headers = Object.fromEntries(
    Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), String(v)]),
  );
  const entry = {
    method: init.method ?? "GET",
    path: new URL(url).pathname,
    content_type: headers["content-type"] ?? null,
    content_encoding: headers["content-encoding"] ?? null,
    streamed: init.body instanceof ReadableStream,
    status: null,
  };
  requests.push(entry);
  const response = await fetch(url, init);
  entry.status = response.status;
  if (entry.path === "/info" && mode === "batch") {
    const info = await response.json();
    info.batch_ingest_config.use_multipart_endpoint = false;
    return new Response(JSON.stringify(info), { status: 200, headers: response.headers });
  }
  return response;
}

const client = new Client({
  apiUrl: process.env.API_URL,
  apiKey: process.env.API_KEY,
  autoBatchTracing: mode !== "unbatched",
  fetchImplementation: recordingFetch,
});
const project = `js-${scenario}-${mode}`;
const ids = {};

async function traceableScenario() {
  const llmStep = traceable(
    async (prompt) => {
      ids.llm_step = getCurrentRunTree().id;
      return { completion: prompt.toUpperCase(), tokens: [1, 2, 3] };
    },
    { name: "llm_step", run_type: "llm" },
  );
  const failingTool = traceable(
    async (query) => {
      ids.failing_tool = getCurrentRunTree().id;
      throw new Error(`tool failed on ${query}`);
    },
    { name: "failing_tool", run_type: "tool" },
  );
  const pipeline = traceable(
    async (text, options) => {
      ids.pipeline = getCurrentRunTree().id;
      ids.trace_id = getCurrentRunTree().trace_id;
      const first = await llmStep(text.slice(0, 20));
      let failure = null;
      try {
        await failingTool("q1");
      } catch (e) {
        failure = e.message;
      }
      return { first, failure, length: text.length, options_seen: Object.keys(options).sort() };
    },
    {
      name: "pipeline",
      run_type: "chain",
      client,
      project_name: project,
      tags: ["js-e2e"],
      metadata: { case: "nested" },
      tracingEnabled: true,
    },
  );
  const big = "large input ".repeat(42_000); // ~500 KB
  const result = await pipeline(big, { temperature: 0.5, seed: 7 });
  await client.awaitPendingTraceBatches();
  return result;
}

async function runTreeScenario() {
  const root = new RunTree({
    name: "rt_root",
    run_type: "chain",
    inputs: { question: "what is 6 * 7?" },
    client,
    project_name: project,
    tracingEnabled: true,
  });
  await root.postRun();
  const child = root.createChild({ name: "rt_child", run_type: "llm", inputs: { prompt: "6 * 7" } });
  await child.postRun();
  ids.rt_root = root.id;
  ids.rt_child = child.id;
  ids.trace_id = root.trace_id;
  await client.awaitPendingTraceBatches();
  requests.push({ method: "FLUSHED", path: null });
  await child.end({ completion: "42" });
  await child.patchRun();
  await root.end({ answer: 42 });
  await root.patchRun();
  await client.awaitPendingTraceBatches();
  return null;
}

// langsmith 0.12.0 serializes a payload with a large string in a worker thread that it unref()s:
// while that is all that is pending, Node sees nothing to wait for and exits (code 13) with the
// trace unsent, whatever the server. A timer keeps the process alive until the script is done.
const keepAlive = setInterval(() => {}, 1000);
const result = scenario === "runtree" ? await runTreeScenario() : await traceableScenario();
// Unbatched, traceable sends its last update in the background: wait for every answer.
for (let waited = 0; requests.some((r) => r.path !== null && r.status === null) && waited < 30_000; waited += 50) {
  await new Promise((resolve) => setTimeout(resolve, 50));
}
clearInterval(keepAlive);
process.stdout.write(`${JSON.stringify({ ids, result, requests, logged })}\n`);
