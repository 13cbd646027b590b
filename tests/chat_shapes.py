"""LLM runs in each message shape the viewer's chat view recognises, as SDKs and integrations send
them, and malformed ones that must fall back to the JSON tree; traced with the langsmith SDK's
RunTree into one trace (tests/test_ui_chat.py, scripts/ui_screenshot.py)."""

from __future__ import annotations

import json
import uuid
from typing import NamedTuple

from langsmith import Client
from langsmith.run_trees import RunTree


class Shape(NamedTuple):
    name: str
    inputs: dict
    outputs: dict
    input_roles: list[str] | None  # None: the field must show as JSON
    output_roles: list[str] | None
    tools: list[str]  # tool names shown as calls in the inputs
    texts: list[str]  # shown in the chat


LONG_SYSTEM = "You are a weather bot. " * 200  # 4,600 characters: cut, with "show all"


def _lc(cls: str, **kwargs) -> dict:
    return {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", cls], "kwargs": kwargs}


SHAPES = [
    Shape(
        "openai_chat",
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": LONG_SYSTEM},
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_w",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_w", "content": "21 °C, sunny"},
            ],
        },
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "It is 21 °C and sunny in Paris."},
                    "finish_reason": "stop",
                }
            ]
        },
        ["system", "user", "assistant", "tool"],
        ["assistant"],
        ["get_weather"],
        ["Weather in Paris?", "21 °C, sunny", "It is 21 °C and sunny in Paris."],
    ),
    Shape(
        "anthropic_messages",
        {
            "model": "claude-sonnet",
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "lookup_weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 °C"}],
                },
            ],
        },
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Oslo: 3 °C."}],
            "stop_reason": "end_turn",
        },
        ["system", "user", "assistant", "user"],
        ["assistant"],
        ["lookup_weather"],
        ["You are terse.", "Weather in Oslo?", "3 °C", "Oslo: 3 °C."],
    ),
    Shape(
        "langchain_serialised",
        {
            "messages": [
                [
                    _lc("SystemMessage", content="Be brief.", type="system"),
                    _lc("HumanMessage", content="What is 2+2?", type="human"),
                ]
            ]
        },
        {
            "generations": [
                [
                    {
                        "text": "4",
                        "type": "ChatGeneration",
                        "message": _lc(
                            "AIMessage",
                            content="",
                            type="ai",
                            tool_calls=[{"name": "calculator", "args": {"expr": "2+2"}, "id": "call_calc"}],
                        ),
                    }
                ]
            ],
            "llm_output": None,
        },
        ["system", "user"],
        ["assistant"],
        [],
        ["Be brief.", "What is 2+2?", "calculator"],
    ),
    Shape(
        "langchain_dicts",
        {
            "messages": [
                {"type": "human", "data": {"content": "Name a warm colour.", "type": "human"}},
                {
                    "type": "ai",
                    "data": {
                        "content": "",
                        "type": "ai",
                        "tool_calls": [{"name": "pick_colour", "args": {"warm": True}, "id": "call_c"}],
                    },
                },
                {"type": "tool", "data": {"content": "red", "tool_call_id": "call_c", "type": "tool"}},
            ]
        },
        {"output": {"type": "ai", "content": "Red."}},
        ["user", "assistant", "tool"],
        ["assistant"],
        ["pick_colour"],
        ["Name a warm colour.", "red", "Red."],
    ),
    Shape(  # OTLP span with gen_ai.input.messages / gen_ai.output.messages, as the otel mapping stores it
        "genai_span",
        {
            "messages": [
                {"role": "user", "parts": [{"type": "text", "content": "Translate hello to French."}]},
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "tool_call", "id": "call_t", "name": "translate", "arguments": {"to": "fr"}}
                    ],
                },
                {
                    "role": "tool",
                    "parts": [{"type": "tool_call_response", "id": "call_t", "response": "bonjour"}],
                },
            ],
            "system": [{"type": "text", "content": "You translate."}],
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Bonjour."}],
                    "finish_reason": "stop",
                }
            ]
        },
        ["system", "user", "assistant", "tool"],
        ["assistant"],
        ["translate"],
        ["You translate.", "Translate hello to French.", "bonjour", "Bonjour."],
    ),
    Shape(  # OTLP span with OpenInference llm.input_messages.N.message.* (indexes stay object keys)
        "openinference_span",
        {
            "messages": [
                {"role": "system", "content": "You count."},
                {"role": "user", "content": "Count to 3."},
                {
                    "role": "assistant",
                    "tool_calls": {
                        "0": {
                            "tool_call": {
                                "id": "call_n",
                                "function": {"name": "count", "arguments": '{"to": 3}'},
                            }
                        }
                    },
                },
            ]
        },
        {"messages": [{"role": "assistant", "content": "1, 2, 3."}]},
        ["system", "user", "assistant"],
        ["assistant"],
        ["count"],
        ["You count.", "Count to 3.", "1, 2, 3."],
    ),
    Shape(
        "malformed",
        {"messages": [{"role": "user", "content": "fine"}, {"role": 42, "content": "a number is no role"}]},
        {"choices": [{"message": {"role": "assistant"}}]},  # a role alone is no message
        None,
        None,
        [],
        ["a number is no role"],
    ),
]


def trace_shapes(api_url: str, api_key: str | None, project: str) -> tuple[uuid.UUID, dict[str, str]]:
    """One trace: a chain whose children are LLM runs, one per shape. Returns the trace id and
    each shape's run id."""
    client = Client(api_url=api_url, api_key=api_key or "unused")
    root = RunTree(
        name="chat_shapes",
        run_type="chain",
        inputs={"question": "Which shapes?"},
        project_name=project,
        client=client,
    )
    ids = {}
    children = []
    for shape in SHAPES:
        child = root.create_child(name=shape.name, run_type="llm", inputs=shape.inputs)
        child.end(outputs=shape.outputs)
        children.append(child)
        ids[shape.name] = str(child.id)
    root.end(outputs={"shapes": len(SHAPES)})
    root.post()
    for child in children:
        child.post()
    client.flush()
    return root.trace_id, ids
