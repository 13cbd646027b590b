"""The README's screenshots of the viewer, from a real traced pipeline.

Starts a server (the test settings: RUN_HANDLER_ENV=test, services up), traces tests/pipelines.py's
pipeline with the langsmith SDK, and a day of earlier runs of it with the SDK's RunTree (start
and end times in the past, some failed), then in headless chromium saves:
  <dir>/trace-page.png    the trace page with the failed step selected
  <dir>/chat-view.png     the same trace with its LLM step selected: the messages as a chat
  <dir>/monitor.png       the project's monitor over the last day
Usage: python scripts/ui_screenshot.py [dir] (make ui-screenshot; dir defaults to docs).
"""

from __future__ import annotations

import random
import sys
import tempfile
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langsmith import Client  # noqa: E402
from langsmith.run_trees import RunTree  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from handler.read.sessions import session_id_for  # noqa: E402
from tests.pipelines import STEPS, trace_pipeline, wait_for_runs  # noqa: E402
from tests.server import start_server  # noqa: E402
from tests.test_ui import start_browser  # noqa: E402


def earlier_day(url: str, project: str) -> None:
    """About four traces an hour over the last day, shaped like the pipeline's: a root and five
    steps; busier in the afternoon, slower and failing more in two bad hours."""
    client = Client(api_url=url, api_key="unused")
    rng = random.Random(27)
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for hour in range(23, 0, -1):  # the 23 whole hours before this one
        at = this_hour - timedelta(hours=hour)
        bad = hour in (9, 10)
        for _ in range(rng.randint(2, 4) + (3 if 12 <= at.hour <= 17 else 0)):
            start = at + timedelta(minutes=rng.uniform(0, 58))
            latency = rng.lognormvariate(6.5 if not bad else 7.5, 0.5)  # ms: ~650, ~1,800 when bad
            failed = rng.random() < (0.4 if bad else 0.05)
            root = RunTree(
                name="answer_question",
                run_type="chain",
                inputs={"question": rng.choice(["How does run-handler ingest runs?", "Where are runs stored?"])},
                start_time=start,
                project_name=project,
                client=client,
            )
            steps = [
                root.create_child(
                    name=name,
                    run_type="tool",
                    inputs={},
                    start_time=start + timedelta(milliseconds=1),
                    end_time=start + timedelta(milliseconds=latency * 0.8),
                )
                for name in STEPS[1:]
            ]
            root.end(outputs={"answer": "..."}, error="ValueError: citation does not match" if failed else None)
            root.end_time = start + timedelta(milliseconds=latency)
            root.post()
            for step in steps:
                step.post()
    client.flush()


def main(out_dir: str) -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK's, on list_runs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    server = start_server(Path(tempfile.mkdtemp()), "screenshot")
    try:
        url = f"http://127.0.0.1:{server.client.port}"
        project = f"demo-{uuid.uuid4().hex[:6]}"
        earlier_day(url, project)
        trace_id = trace_pipeline(url, None, project, big=False)
        wait_for_runs(url, None, trace_id, len(STEPS))
        browser = start_browser(1400, 760)
        try:
            wait = WebDriverWait(browser, 20)
            browser.get(f"{url}/ui/trace/{trace_id}")
            rows = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, ".run-row")))
            rows[STEPS.index("check_citations")].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-error"))
            browser.save_screenshot(str(out / "trace-page.png"))
            browser.set_window_size(1400, 1060)  # the whole conversation, reply included
            rows[STEPS.index("chat_model")].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-outputs .chat"))
            browser.save_screenshot(str(out / "chat-view.png"))
            browser.set_window_size(1400, 1000)
            browser.get(f"{url}/ui/projects/{session_id_for('default', project)}/monitor?days=1")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".series[data-series=p99] circle"))
            browser.save_screenshot(str(out / "monitor.png"))
        finally:
            browser.quit()
    finally:
        server.stop()
    print(f"saved {out}/trace-page.png, chat-view.png, monitor.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
