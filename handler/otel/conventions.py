"""The attribute names of the conventions spans use -- LangSmith's, the OpenTelemetry GenAI
semantic conventions, OpenInference and Traceloop (OpenLLMetry) -- and which run field each gives.
The README's "OpenTelemetry" section has the table; these are the table's rules."""

from __future__ import annotations

import re

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

# run_type, in this order: langsmith.span.kind, gen_ai.operation.name, openinference.span.kind,
# traceloop.span.kind; otherwise chain.
RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})
GEN_AI_OPERATIONS = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "completion": "llm",
    "embeddings": "embedding",
    "embedding": "embedding",
    "execute_tool": "tool",
    "invoke_agent": "chain",
    "create_agent": "chain",
}
OPENINFERENCE_KINDS = {
    "LLM": "llm",
    "EMBEDDING": "embedding",
    "RETRIEVER": "retriever",
    "TOOL": "tool",
    "CHAIN": "chain",
    "AGENT": "chain",
    "RERANKER": "retriever",
    "GUARDRAIL": "chain",
    "EVALUATOR": "chain",
    "PROMPT": "prompt",
}
TRACELOOP_KINDS = {"workflow": "chain", "task": "chain", "agent": "chain", "tool": "tool", "llm": "llm"}

NAMES = ("langsmith.trace.name", "traceloop.entity.name")  # before the span's name
# Where a run's model, provider, parameters and tokens are found, first found wins.
MODEL = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
TOKENS = (
    ("input_tokens", ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")),
    (
        "output_tokens",
        ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"),
    ),
    ("total_tokens", ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")),
)
REQUEST_PARAM = "gen_ai.request."
METADATA = "langsmith.metadata."
# gen_ai.prompt.0.role, llm.input_messages.0.message.content ...
INDEXED = re.compile(
    r"(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.(\d+)\.(.+)"
)
INDEXED_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
MESSAGE_PREFIX = "message."


def run_type_of(attrs: dict) -> str:
    kind = attrs.get("langsmith.span.kind")
    if isinstance(kind, str) and kind.lower() in RUN_TYPES:
        return kind.lower()
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation.lower() in GEN_AI_OPERATIONS:
        return GEN_AI_OPERATIONS[operation.lower()]
    kind = attrs.get("openinference.span.kind")
    if isinstance(kind, str) and kind.upper() in OPENINFERENCE_KINDS:
        return OPENINFERENCE_KINDS[kind.upper()]
    kind = attrs.get("traceloop.span.kind")
    if isinstance(kind, str) and kind.lower() in TRACELOOP_KINDS:
        return TRACELOOP_KINDS[kind.lower()]
    return "chain"
