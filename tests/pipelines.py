"""A small traced LLM pipeline with a failing step, for the viewer's browser test and the README
screenshot (scripts/ui_screenshot.py): traced with the real ``langsmith`` SDK."""

from __future__ import annotations

import json
import time
import uuid

from langsmith import Client, traceable, tracing_context

BIG_INPUT = "lorem ipsum dolor sit amet " * 80_000  # ~2 MB: the viewer must show it collapsed


@traceable(run_type="retriever", name="retrieve_docs")
def retrieve(question: str) -> list[dict]:
    time.sleep(0.03)
    return [
        {"id": "doc-1", "text": "Tornado is a Python web framework."},
        {"id": "doc-2", "text": "ijson parses JSON as a stream."},
    ]


@traceable(run_type="prompt", name="format_prompt")
def format_prompt(question: str, docs: list[dict]) -> list[dict]:
    """OpenAI chat messages: the retrieval shown as a tool call and its result (the viewer's chat)."""
    return [
        {"role": "system", "content": "Answer from the documents. Cite them as [n]."},
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "retrieve_docs", "arguments": json.dumps({"question": question})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "\n".join(d["text"] for d in docs)},
    ]


@traceable(
    run_type="llm", name="chat_model", metadata={"ls_model_name": "tiny-test-model", "temperature": 0.2}
)
def chat_model(messages: list[dict]) -> dict:
    time.sleep(0.05)
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Tornado serves it; ijson splits it. [1][2]"},
                "finish_reason": "stop",
            }
        ]
    }


@traceable(run_type="tool", name="check_citations")
def check_citations(answer: str) -> None:
    time.sleep(0.01)
    raise ValueError("citation [3] does not match any retrieved document")


@traceable(run_type="parser", name="parse_answer")
def parse_answer(reply: dict) -> str:
    return reply["choices"][0]["message"]["content"]


@traceable(run_type="chain", name="answer_question", tags=["demo"], metadata={"user": "ada"})
def answer_question(question: str, context: str = "") -> str:
    docs = retrieve(question)
    reply = chat_model(format_prompt(question, docs))
    answer = parse_answer(reply)
    try:
        check_citations(answer)
    except ValueError:
        pass
    return answer


STEPS = ["answer_question", "retrieve_docs", "format_prompt", "chat_model", "parse_answer", "check_citations"]


def trace_pipeline(api_url: str, api_key: str | None, project: str, big: bool = True) -> uuid.UUID:
    """Trace one run of the pipeline into ``project``; returns its trace id, once sent."""
    client = Client(api_url=api_url, api_key=api_key or "unused")
    root = uuid.uuid4()
    with tracing_context(enabled=True, client=client, project_name=project):
        answer_question(
            "How does run-handler ingest runs?", BIG_INPUT if big else "", langsmith_extra={"run_id": root}
        )
    client.flush()
    return root


def wait_for_runs(
    api_url: str,
    api_key: str | None,
    trace_id: uuid.UUID,
    count: int,
    seconds: float = 15,
    ended: bool = True,
) -> None:
    """Until the trace's ``count`` runs are committed and ended (the SDK's last request may still be
    committing when flush() returns); ``ended=False``: committed only."""
    client = Client(api_url=api_url, api_key=api_key or "unused")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = list(client.list_runs(trace_id=trace_id, select=["id", "end_time"]))
        if len(runs) >= count and (not ended or all(r.end_time for r in runs)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"trace {trace_id} did not get its {count} runs")
