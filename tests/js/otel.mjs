// OpenTelemetry's own Node exporters, pointed at run-handler, driven by tests/test_otel_js.py.
//
//   node otel.mjs MODE      (URL, the traces endpoint, and API_KEY in the environment)
//
// MODE: "proto" (@opentelemetry/exporter-trace-otlp-proto: application/x-protobuf) or "json"
// (@opentelemetry/exporter-trace-otlp-http: the OTLP JSON encoding). Each span is exported as it
// ends (SimpleSpanProcessor), so every child reaches the server before its parent.
//
// Prints one JSON object: the trace id, each span's id and parent by name, and the result code of
// every export (0 is success).
import { context, SpanStatusCode, trace } from "@opentelemetry/api";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";

const mode = process.argv[2];
const Exporter = mode === "proto" ? ProtoExporter : JsonExporter;
const exporter = new Exporter({
  url: process.env.URL,
  headers: { "x-api-key": process.env.API_KEY, "Langsmith-Project": `node-${mode}` },
});
const results = [];
const exportOriginal = exporter.export.bind(exporter);
exporter.export = (spans, done) => exportOriginal(spans, (result) => {
  results.push(result.code);
  done(result);
});
const provider = new TracerProvider({
  resource: resourceFromAttributes({ "service.name": "node-otel-test" }),
  spanProcessors: [new SimpleSpanProcessor({ exporter })],
});
const tracer = provider.getTracer("node-test", "0.1.0");
const spans = {};
const child = (parent, name, attributes) => {
  const span = tracer.startSpan(name, { attributes }, trace.setSpan(context.active(), parent));
  spans[name] = span;
  return span;
};

const root = tracer.startSpan("agent", { attributes: { "openinference.span.kind": "AGENT", "input.value": "hi" } });
spans.agent = root;
const llm = child(root, "chat", {
  "gen_ai.operation.name": "chat",
  "gen_ai.request.model": "gpt-4o-mini",
  "gen_ai.usage.input_tokens": 4,
  "gen_ai.usage.output_tokens": 2,
});
llm.end();
const tool = child(root, "search", { "gen_ai.operation.name": "execute_tool", "tool.args": ["a", "b"] });
tool.recordException(new Error("search is down"));
tool.setStatus({ code: SpanStatusCode.ERROR, message: "search is down" });
tool.end();
root.end();
await provider.forceFlush();
await provider.shutdown();

const ids = Object.fromEntries(
  Object.entries(spans).map(([name, span]) => [name, span.spanContext().spanId]),
);
console.log(JSON.stringify({ traceId: root.spanContext().traceId, ids, results }));
