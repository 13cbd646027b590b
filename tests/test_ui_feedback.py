"""The trace viewer shows a run's feedback (key, score or value, comment), in headless chromium
through selenium, as tests/test_ui.py drives it; skipped, saying so, without chromium."""

from __future__ import annotations

import uuid

import pytest
from langsmith import Client

from tests.pipelines import STEPS, trace_pipeline, wait_for_runs
from tests.server import start_server
from tests.test_ui import WAIT_S, start_browser

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Creating feedback for a run")


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """An open server (no key to ask for) with a traced pipeline, two of its runs rated."""
    srv = start_server(tmp_path_factory.mktemp("ui-feedback"), "ui-feedback")
    url = f"http://127.0.0.1:{srv.client.port}"
    trace_id = trace_pipeline(url, None, f"ui-feedback-{uuid.uuid4().hex[:8]}", big=False)
    wait_for_runs(url, None, trace_id, len(STEPS))
    client = Client(api_url=url, api_key="unused")
    chat = next(r.id for r in client.list_runs(trace_id=trace_id) if r.name == "chat_model")
    client.create_feedback(trace_id, key="user_rating", score=1, comment="great answer")
    client.create_feedback(trace_id, key="tone", value="friendly")
    client.create_feedback(chat, key="correctness", score=0.25, comment="half right")
    yield url, trace_id
    srv.stop()


def _feedback_rows(browser) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#detail-body .field-feedback tbody tr")
    return sorted([td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows)


def test_the_trace_page_shows_each_runs_feedback(rated):
    url, trace_id = rated
    browser = start_browser()
    try:
        wait = WebDriverWait(browser, WAIT_S)
        browser.get(f"{url}/ui/trace/{trace_id}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-feedback"))
        assert _feedback_rows(browser) == [["tone", "friendly", ""], ["user_rating", "1", "great answer"]]

        rows = browser.find_elements(By.CSS_SELECTOR, ".run-row")
        names = [r.find_element(By.CSS_SELECTOR, ".run-name").text for r in rows]
        rows[names.index("chat_model")].click()
        wait.until(lambda d: _feedback_rows(d) == [["correctness", "0.25", "half right"]])

        rows[names.index("parse_answer")].click()  # no feedback: no section
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-outputs"))
        assert "parse_answer" in browser.find_element(By.ID, "detail-title").text
        assert browser.find_elements(By.CSS_SELECTOR, "#detail-body .field-feedback") == []
    finally:
        browser.quit()
