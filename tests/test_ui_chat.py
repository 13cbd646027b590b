"""The chat view of LLM runs, in Chromium: each message shape of tests/chat_shapes.py, traced with
the langsmith SDK, shows as chat turns with its tool calls, long text cut, raw JSON a click away; a
malformed one shows the JSON tree. Also: a run's URL selects it, j/k move through the trace, and the
recognition module answers through the page for shapes the SDK runs above do not cover.
"""

from __future__ import annotations

import uuid

import pytest

from tests.chat_shapes import SHAPES, trace_shapes
from tests.pipelines import wait_for_runs
from tests.test_ui import KEY, WAIT_S, browser, viewer_server  # noqa: F401 (fixtures)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (the test extra has it)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(viewer_server):  # noqa: F811
    url = f"http://127.0.0.1:{viewer_server.client.port}"
    trace_id, ids = trace_shapes(url, KEY, f"chat-{uuid.uuid4().hex[:8]}")
    wait_for_runs(url, KEY, trace_id, len(SHAPES) + 1)
    return url, trace_id, ids


def open_run(driver, url: str, trace_id, run_id: str, title: str) -> WebDriverWait:
    """The trace page at a run's URL, with the key given once for the tab."""
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(f"{url}/ui/trace/{trace_id}?run={run_id}")
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "key-input")))
    key_input.send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), title))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-outputs"))
    return wait


def roles(driver, field: str) -> list[str] | None:
    chats = driver.find_elements(By.CSS_SELECTOR, f"#detail-body .field-{field} .chat")
    if not chats:
        return None
    return [t.get_attribute("data-role") for t in chats[0].find_elements(By.CSS_SELECTOR, ".chat-turn")]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_each_shape_renders_as_a_chat(browser, shapes, shape):  # noqa: F811
    url, trace_id, ids = shapes
    open_run(browser, url, trace_id, ids[shape.name], shape.name)
    assert roles(browser, "inputs") == shape.input_roles
    assert roles(browser, "outputs") == shape.output_roles
    body = browser.find_element(By.ID, "detail-body")
    for field, expected in (("inputs", shape.input_roles), ("outputs", shape.output_roles)):
        section = body.find_element(By.CSS_SELECTOR, f".field-{field}")
        # A field that is no chat is the JSON tree, and the page still works.
        assert bool(section.find_elements(By.CSS_SELECTOR, ":scope > .json")) == (expected is None)
    called = [
        e.get_attribute("data-tool") for e in body.find_elements(By.CSS_SELECTOR, ".field-inputs [data-tool]")
    ]
    assert called == shape.tools
    for text in shape.texts:
        assert text in body.text, text
    assert "Error:" not in browser.find_element(By.ID, "message").text


def test_long_content_and_raw_json(browser, shapes):  # noqa: F811
    url, trace_id, ids = shapes
    open_run(browser, url, trace_id, ids["openai_chat"], "openai_chat")
    inputs = browser.find_element(By.CSS_SELECTOR, "#detail-body .field-inputs")
    system = inputs.find_element(By.CSS_SELECTOR, ".chat-turn[data-role=system]")
    more = system.find_element(By.CSS_SELECTOR, "button.more")
    assert more.text == "show all 4,600 characters" and len(system.text) < 2_200
    more.click()
    assert len(system.text) > 4_600
    # The toggle shows the field as sent, and back.
    toggle = inputs.find_element(By.CSS_SELECTOR, ".chat-toggle")
    toggle.click()
    assert not inputs.find_elements(By.CSS_SELECTOR, ".chat") and inputs.find_elements(
        By.CSS_SELECTOR, ".json"
    )
    assert "gpt-4o-mini" in inputs.text and toggle.text == "Chat"
    toggle.click()
    assert inputs.find_elements(By.CSS_SELECTOR, ".chat") and toggle.text == "Raw JSON"


def test_run_urls_and_j_k(browser, shapes):  # noqa: F811
    url, trace_id, ids = shapes
    names = [s.name for s in SHAPES]
    wait = open_run(browser, url, trace_id, ids[names[1]], names[1])
    assert browser.current_url.endswith(f"?run={ids[names[1]]}")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), names[2]))
    assert browser.current_url.endswith(f"?run={ids[names[2]]}")
    body.send_keys("k")
    body.send_keys("k")
    wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), names[0]))
    body.send_keys("k")
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "detail-title"), "chat_shapes")
    )  # the root, first row
    body.send_keys("k")  # nothing above the root
    assert browser.find_element(By.CSS_SELECTOR, ".run-row.selected").get_attribute("data-run-id") == str(
        trace_id
    )
    assert KEY not in browser.current_url


# Shapes the runs above do not carry, and edge cases: through the page's own module.
RECOGNISED = [
    # OpenInference attributes kept flat; a legacy OpenAI function call; a completion's text.
    ([{"message.role": "user", "message.content": "hi"}], [("user", "hi", [])]),
    (
        {
            "messages": [
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
            ]
        },
        [("assistant", None, ["f"])],
    ),
    ({"choices": [{"text": "done", "index": 0, "finish_reason": "stop"}]}, [("assistant", "done", [])]),
    # GenAI messages as the attribute's JSON text; OpenInference contents.N.message_content.
    ('[{"role": "user", "parts": [{"type": "text", "content": "as text"}]}]', [("user", "as text", [])]),
    (
        {
            "messages": [
                {"role": "user", "contents": {"0": {"message_content": {"type": "text", "text": "c0"}}}}
            ]
        },
        [("user", "c0", [])],
    ),
    # LangChain's {type, content} dicts, an AIMessageChunk, a ChatMessage with its own role.
    ({"messages": [{"type": "human", "content": "q"}]}, [("user", "q", [])]),
    (
        {
            "output": {
                "lc": 1,
                "type": "constructor",
                "id": ["x", "AIMessageChunk"],
                "kwargs": {"content": "a"},
            }
        },
        [("assistant", "a", [])],
    ),
    (
        {"messages": [{"lc": 1, "id": ["ChatMessage"], "kwargs": {"role": "system", "content": "s"}}]},
        [("system", "s", [])],
    ),
]
NOT_CHATS = [
    {"question": "plain inputs"},
    {"messages": []},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": "a"}, "not a message"]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
    {"choices": [{"message": "text"}]},
    {"generations": [[{"type": "Generation"}]]},
    "not json",
    None,
    [1, 2],
]


def test_recognition_through_the_page(browser, shapes):  # noqa: F811
    url, trace_id, ids = shapes
    open_run(browser, url, trace_id, ids["openai_chat"], "openai_chat")
    recognise = "return ChatMessages.recognize(arguments[0])"
    for value, expected in RECOGNISED:
        turns = browser.execute_script(recognise, value)
        assert turns is not None, value
        got = [
            (
                t["role"],
                "".join(p.get("text", "") for p in t["parts"]) or None,
                [c["name"] for c in t["toolCalls"]],
            )
            for t in turns
        ]
        assert got == expected, value
    for value in NOT_CHATS:
        assert browser.execute_script(recognise, value) is None, value
