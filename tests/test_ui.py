"""The trace viewer in a real browser: Debian's ``chromium`` and ``chromium-driver``, driven by
selenium (``make test-setup`` installs them when it runs as root on a Debian-like system).

A pipeline with a failing step is traced with the SDK; the test opens /ui, gives the key when
asked, finds the trace, opens it, checks the tree's rows and the failed step, and selects a run to
see its input. A failing test saves a screenshot under ``.ui-screenshots/`` (its path is in the
failure message).
"""

from __future__ import annotations

import shutil
import uuid

import pytest

from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT
from tests.pipelines import STEPS, trace_pipeline, wait_for_runs
from tests.server import start_server

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (the test extra has it)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "viewer-key"
SCREENSHOTS = REPO_ROOT / ".ui-screenshots"
WAIT_S = 20  # an upper bound for the page to reach a state, not a measurement


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip(
            "chromium and chromedriver are not installed: the browser tests need Debian's chromium and"
            " chromium-driver (make test-setup installs them when it runs as root with apt-get)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("ui"), "ui", API_KEYS=f"viewer:{hash_key(KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def start_browser(width: int = 1400, height: int = 900):
    browser, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture
def browser(request):
    driver = start_browser()
    failed_before = request.session.testsfailed
    yield driver
    if request.session.testsfailed > failed_before:  # this test's call failed (reported before teardown)
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{request.node.name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot of the failed UI test: {path}")
    driver.quit()


@pytest.fixture(scope="module")
def traced(viewer_server):
    url = f"http://127.0.0.1:{viewer_server.client.port}"
    project = f"ui-{uuid.uuid4().hex[:8]}"
    trace_id = trace_pipeline(url, KEY, project)
    wait_for_runs(url, KEY, trace_id, len(STEPS))
    return url, project, trace_id


def test_find_a_trace_and_read_it(browser, traced):
    url, project, trace_id = traced
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui")
    # The server has keys: the page asks for one, once, and keeps it for the tab.
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "key-input")))
    key_input.send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(lambda d: project in [o.text for o in Select(d.find_element(By.ID, "project")).options])
    Select(browser.find_element(By.ID, "project")).select_by_visible_text(project)
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-trace-id='{trace_id}']")))
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "answer_question" and cells[3] == "success" and cells[4] == str(len(STEPS))
    assert cells[2].endswith(("ms", "s"))  # a duration is shown
    assert "x-api-key" not in browser.current_url and KEY not in browser.current_url

    # Filters: no failed root run in this project.
    Select(browser.find_element(By.ID, "status")).select_by_value("error")
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "No traces match"))
    Select(browser.find_element(By.ID, "status")).select_by_value("")
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-trace-id='{trace_id}'] a")))
    row.click()

    # The trace page: the tree in order, indented, the failed step red with its error.
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".run-row")))
    rows = browser.find_elements(By.CSS_SELECTOR, ".run-row")
    names = [r.find_element(By.CSS_SELECTOR, ".run-name").text for r in rows]
    assert names == STEPS
    depths = [int(r.get_attribute("data-depth")) for r in rows]
    assert depths == [0, 1, 1, 1, 1, 1]
    failed = rows[names.index("check_citations")]
    assert "status-row-error" in failed.get_attribute("class")
    assert "citation [3] does not match" in failed.find_element(By.CSS_SELECTOR, ".run-error").text
    assert all(r.find_elements(By.CSS_SELECTOR, ".track .bar") for r in rows)

    # The root is selected first: its 2 MB input is there, cut short with a way to see it all.
    detail = wait.until(EC.visibility_of_element_located((By.ID, "detail-body")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-inputs"))
    inputs = browser.find_element(By.CSS_SELECTOR, "#detail-body .field-inputs")
    assert "How does run-handler ingest runs?" in inputs.text
    assert "show all 2,160,000 characters" in inputs.text
    assert len(detail.text) < 20_000

    # Selecting another run shows its input, outputs and metadata.
    rows[names.index("chat_model")].click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), "chat_model"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-outputs"))
    body = browser.find_element(By.ID, "detail-body").text
    assert "Answer from the documents." in body and "Tornado serves it" in body
    assert "tiny-test-model" in body
    rows[names.index("check_citations")].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-body .field-error"))
    assert "ValueError" in browser.find_element(By.CSS_SELECTOR, "#detail-body .field-error").text


def test_a_refused_key_sees_nothing(browser, traced):
    url, _, trace_id = traced
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui/trace/{trace_id}")
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "key-input")))
    key_input.send_keys("not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "key-error"), "refused"))
    assert browser.find_elements(By.CSS_SELECTOR, ".run-row") == []


def test_an_open_server_needs_no_key(browser, server):
    url = f"http://127.0.0.1:{server.client.port}"
    project = f"open-{uuid.uuid4().hex[:8]}"
    trace_id = trace_pipeline(url, None, project, big=False)
    wait_for_runs(url, None, trace_id, len(STEPS))
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui?project={session_id_for('default', project)}")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-trace-id='{trace_id}']")))
    assert not browser.find_element(By.ID, "key-form").is_displayed()
