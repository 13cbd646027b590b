"""The trace list's filter box: the filter language of /runs/query (handler/query/, the same
compiler) sent to /ui/api/traces as ``filter=`` and applied to the listed roots; a mistake is the
API's 400 with its position, shown beside the box while the list stays; the filter round-trips
through the page's URL. A project is seeded with the langsmith SDK (RunTree).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from langsmith import Client
from langsmith.run_trees import RunTree

from handler.read.sessions import session_id_for
from tests.pipelines import wait_for_runs
from tests.test_ui import KEY, WAIT_S, browser, viewer_server  # noqa: F401 (fixtures)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (the test extra has it)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (root name, run type, latency in ms, failed, child names): a child named "retrieve" under an
# "answer" root shows that the filter applies to the roots listed, not to any run of the trace.
ROOTS = [
    ("retrieve", "retriever", 100, False, []),
    ("answer", "chain", 3000, False, ["retrieve", "llm"]),
    ("answer", "chain", 500, True, []),
    ("summarise", "chain", 200, False, ["llm"]),
]
BAD = 'eq(nmae, "answer")'  # an unknown field
ANSWERS = 'eq(name, "answer")'


def seed(url: str, project: str) -> dict[str, list[str]]:
    client = Client(api_url=url, api_key=KEY)
    start = datetime.now(UTC) - timedelta(minutes=10)
    by_name: dict[str, list[str]] = {}
    posted = []
    for i, (name, run_type, latency, failed, children) in enumerate(ROOTS):
        began = start + timedelta(minutes=i)
        root = RunTree(
            name=name,
            run_type=run_type,
            inputs={"q": f"{name} {i}"},
            start_time=began,
            project_name=project,
            client=client,
        )
        kids = [
            root.create_child(
                name=child,
                run_type="tool",
                inputs={},
                start_time=began + timedelta(milliseconds=1),
                end_time=began + timedelta(milliseconds=2),
            )
            for child in children
        ]
        root.end(outputs={"ok": not failed}, error="ValueError: no" if failed else None)
        root.end_time = began + timedelta(milliseconds=latency)
        root.post()
        for kid in kids:
            kid.post()
        by_name.setdefault(name, []).insert(0, str(root.trace_id))  # newest first, as listed
        posted.append((root.trace_id, 1 + len(children)))
    client.flush()
    for trace_id, count in posted:
        wait_for_runs(url, KEY, trace_id, count, ended=False)
    return by_name


@pytest.fixture(scope="module")
def seeded(viewer_server):  # noqa: F811
    url = f"http://127.0.0.1:{viewer_server.client.port}"
    project = f"filter-{uuid.uuid4().hex[:8]}"
    by_name = seed(url, project)
    return url, viewer_server.client, str(session_id_for("viewer", project)), by_name


def traces(client, session: str, text: str | None, **more: str):
    query = f"/ui/api/traces?session={session}"
    if text is not None:
        query += "&filter=" + quote(text)
    query += "".join(f"&{k}={quote(v)}" for k, v in more.items())
    return client.get(query, headers={"x-api-key": KEY})


def listed(answer) -> list[str]:
    assert answer.status == 200, answer.body
    return [t["trace_id"] for t in answer.json()["traces"]]


def test_the_api_filters_the_roots(seeded):
    _, client, session, by_name = seeded
    everything = listed(traces(client, session, None))
    assert len(everything) == len(ROOTS)
    assert listed(traces(client, session, "")) == everything  # an empty box filters nothing
    assert listed(traces(client, session, 'eq(name, "answer")')) == by_name["answer"]
    # Only the root named retrieve: the answer trace's child of that name does not list its trace.
    assert listed(traces(client, session, 'eq(name, "retrieve")')) == by_name["retrieve"]
    assert listed(traces(client, session, 'and(eq(name, "answer"), eq(status, "error"))')) == [
        by_name["answer"][0]
    ]
    assert listed(traces(client, session, 'gt(latency, "1s")')) == [by_name["answer"][1]]
    assert listed(traces(client, session, 'eq(run_type, "retriever")')) == by_name["retrieve"]
    assert listed(traces(client, session, 'eq(name, "nothing")')) == []
    # With the page's other filters, all ANDed.
    assert listed(traces(client, session, 'neq(name, "retrieve")', status="error")) == [by_name["answer"][0]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BAD, "filter: unknown field 'nmae' at position 3"),
        ('eq(name, "answer"', "filter: "),
        ('foo(name, "x")', "filter: unknown comparator 'foo' at position 0"),
        ('gt(latency, "soon")', "filter: latency"),
    ],
)
def test_the_api_refuses_a_bad_filter_with_its_position(seeded, text, reason):
    _, client, session, _ = seeded
    answer = traces(client, session, text)
    assert answer.status == 400, answer.body
    error = answer.json()["error"]
    assert error.startswith(reason) and "position" in error, error


def test_the_api_gives_the_same_message_as_runs_query(seeded):
    """The same compiler: /runs/query's ``filter`` refuses the text with the same message."""
    _, client, session, _ = seeded
    ours = traces(client, session, BAD).json()["error"]
    body = json.dumps({"session": [session], "filter": BAD}).encode()
    theirs = client.post(body, "/runs/query", headers={"x-api-key": KEY})
    assert theirs.status == 400 and theirs.json()["error"] == ours


def open_list(browser, url: str, query: str):  # noqa: F811
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui?{query}")
    wait.until(EC.visibility_of_element_located((By.ID, "key-input"))).send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    return wait


def rows(browser) -> list[str]:  # noqa: F811
    """The listed trace ids, read in one script (the list is replaced while the page loads)."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#traces tbody tr')].map((r) => r.dataset.traceId)"
    )


def test_the_box_narrows_the_list_and_round_trips(browser, seeded):  # noqa: F811
    url, _, session, by_name = seeded
    wait = open_list(browser, url, f"project={session}")
    wait.until(lambda d: len(rows(d)) == len(ROOTS))
    box = browser.find_element(By.ID, "filter")
    box.send_keys('eq(name, "answer")', Keys.ENTER)
    wait.until(lambda d: rows(d) == by_name["answer"])
    link = browser.current_url
    assert "filter=" in link and KEY not in link
    assert browser.find_element(By.ID, "filter-error").text == ""
    # The link, opened afresh (same tab: the key is the tab's), shows the same filter and list.
    browser.get("about:blank")
    browser.get(link)
    wait.until(lambda d: rows(d) == by_name["answer"])
    assert browser.find_element(By.ID, "filter").get_attribute("value") == 'eq(name, "answer")'
    # Cleared, the list is the whole project again and the URL drops the filter.
    box = browser.find_element(By.ID, "filter")
    box.clear()
    browser.find_element(By.ID, "apply").click()
    wait.until(lambda d: len(rows(d)) == len(ROOTS))
    assert "filter=" not in browser.current_url


def test_a_bad_filter_shows_its_error_inline_and_the_list_stays(browser, seeded):  # noqa: F811
    url, client, session, by_name = seeded
    expected = traces(client, session, BAD).json()["error"]
    wait = open_list(browser, url, f"project={session}&filter={quote(ANSWERS)}")
    wait.until(lambda d: rows(d) == by_name["answer"])
    box = browser.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(BAD, Keys.ENTER)
    error = browser.find_element(By.ID, "filter-error")
    wait.until(lambda d: error.text)
    assert error.text == expected and "position 3" in error.text
    assert box.get_attribute("aria-invalid") == "true"
    assert browser.execute_script("return arguments[0].selectionStart", box) == 3  # the caret at it
    assert rows(browser) == by_name["answer"]  # the list shown before stays
    assert browser.find_element(By.ID, "message").text == ""  # not the page's error line
    # Fixed, the error goes and the list follows.
    box.clear()
    box.send_keys('eq(name, "summarise")', Keys.ENTER)
    wait.until(lambda d: rows(d) == by_name["summarise"])
    assert error.text == "" and box.get_attribute("aria-invalid") == "false"
    # A link holding a bad filter opens with the error beside the box and no list.
    browser.get("about:blank")
    browser.get(f"{url}/ui?project={session}&filter={quote(BAD)}")
    wait.until(lambda d: d.find_element(By.ID, "filter-error").text == expected)
    assert browser.find_element(By.ID, "filter").get_attribute("value") == BAD
    assert rows(browser) == []
