"""The README's screenshot of a trace page, from a real traced pipeline.

Starts a server (the test settings: RUN_HANDLER_ENV=test, services up), traces tests/pipelines.py's
pipeline with the langsmith SDK, opens its trace page in headless chromium, selects the failed step
and saves the page as a PNG. Usage: python scripts/ui_screenshot.py [out.png] (make ui-screenshot).
"""

from __future__ import annotations

import sys
import tempfile
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.pipelines import STEPS, trace_pipeline, wait_for_runs  # noqa: E402
from tests.server import start_server  # noqa: E402
from tests.test_ui import start_browser  # noqa: E402


def main(out: str) -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK's, on list_runs
    server = start_server(Path(tempfile.mkdtemp()), "screenshot")
    try:
        url = f"http://127.0.0.1:{server.client.port}"
        trace_id = trace_pipeline(url, None, f"demo-{uuid.uuid4().hex[:6]}", big=False)
        wait_for_runs(url, None, trace_id, len(STEPS))
        browser = start_browser(1400, 760)
        try:
            browser.get(f"{url}/ui/trace/{trace_id}")
            wait = WebDriverWait(browser, 20)
            rows = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, ".run-row")))
            rows[STEPS.index("chat_model")].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-outputs"))
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(out)
        finally:
            browser.quit()
    finally:
        server.stop()
    print(f"saved {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/trace-page.png")
