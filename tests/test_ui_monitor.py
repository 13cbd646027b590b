"""The monitor page and its API: a project seeded with the langsmith SDK (RunTree, with start and
end times in the past), its numbers checked in the page (the data each point and table cell
carries, not pixels) and in /ui/api/monitor's answer against counts and percentiles computed here
(counts exactly; percentiles, read off the rollup's histogram, within its documented error);
the series for tokens and feedback checked against a database that has their column (made inside a
transaction that is rolled back) and table; and the trace list's filter links round-tripping.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from langsmith import Client
from langsmith.run_trees import RunTree

from handler.read.sessions import session_id_for
from handler.ui import monitor
from handler.ui.handlers import traces_statement
from tests.pipelines import wait_for_runs
from tests.rollup import close
from tests.test_ui import KEY, WAIT_S, browser, viewer_server  # noqa: F401 (fixtures)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (the test extra has it)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (hours before the current hour, minute, root latency in ms or None while running, root failed,
#  children, a child failed): the children take part of the root's time.
TRACES = [
    (2, 5, 100, False, 2, False),
    (2, 10, 300, True, 1, False),
    (2, 20, 200, False, 0, False),
    (2, 40, None, False, 0, False),  # pending: a trace, but no latency yet
    (5, 30, 1000, False, 4, True),  # a failed child does not make a failed trace
    (20, 0, 50, True, 0, False),
    (72, 0, 400, False, 1, False),  # in the 7 and 30 day windows
    (480, 0, 600, True, 0, False),  # in the 30 day window
    (960, 0, 700, False, 0, False),  # in none
]


def percentile_cont(values: list[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    if not values:
        return None
    v = sorted(values)
    rank = q * (len(v) - 1)
    low = int(rank)
    high = min(low + 1, len(v) - 1)
    return v[low] + (v[high] - v[low]) * (rank - low)


def expected(hour: datetime, days: int, step_hours: int) -> dict[datetime, dict]:
    """Per interval start: traces, runs, errors and root latencies of the seeded traces in the
    window (whole intervals of ``step_hours`` since UTC midnight, the current one last)."""
    step = timedelta(hours=step_hours)
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    until = origin + (hour - origin) // step * step + step
    buckets: dict[datetime, dict] = {}
    for ago, minute, latency, failed, children, _ in TRACES:
        start = hour - timedelta(hours=ago) + timedelta(minutes=minute)
        if not until - timedelta(days=days) <= start < until:
            continue
        b = buckets.setdefault(
            origin + (start - origin) // step * step, {"traces": 0, "runs": 0, "errors": 0, "ms": []}
        )
        b["traces"] += 1
        b["runs"] += 1 + children
        b["errors"] += failed
        if latency is not None:
            b["ms"].append(latency)
    return buckets


def seed(url: str, project: str, hour: datetime) -> list[uuid.UUID]:
    client = Client(api_url=url, api_key=KEY)
    roots = []
    for ago, minute, latency, failed, children, child_failed in TRACES:
        start = hour - timedelta(hours=ago) + timedelta(minutes=minute)
        root = RunTree(
            name="answer",
            run_type="chain",
            inputs={"question": f"question {ago}:{minute}\nsecond line"},
            start_time=start,
            project_name=project,
            client=client,
        )
        posts = []
        for i in range(children):
            posts.append(
                root.create_child(
                    name=f"step{i}",
                    run_type="tool",
                    inputs={"i": i},
                    start_time=start + timedelta(milliseconds=1),
                    end_time=start + timedelta(milliseconds=2),
                    error="step failed" if child_failed and i == 0 else None,
                )
            )
        if latency is not None:
            root.end(outputs={"ok": not failed}, error="ValueError: no" if failed else None)
            root.end_time = start + timedelta(milliseconds=latency)
        root.post()
        for child in posts:
            child.post()
        roots.append((root.trace_id, 1 + children))
    client.flush()
    for trace_id, count in roots:
        wait_for_runs(url, KEY, trace_id, count, ended=False)
    return [t for t, _ in roots]


@pytest.fixture(scope="module")
def seeded(viewer_server):  # noqa: F811
    url = f"http://127.0.0.1:{viewer_server.client.port}"
    project = f"monitor-{uuid.uuid4().hex[:8]}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    seed(url, project, hour)
    return url, viewer_server.client, str(session_id_for("viewer", project)), hour


def api(client, session: str, days: str, key: str | None = KEY):
    headers = {"x-api-key": key} if key else {}
    return client.get(f"/ui/api/monitor?session={session}&days={days}", headers=headers)


@pytest.mark.parametrize(("days", "step_hours"), [("1", 1), ("7", 6), ("30", 24)])
def test_the_api_counts_the_seeded_project(seeded, days, step_hours):
    _, client, session, hour = seeded
    answer = api(client, session, days)
    assert answer.status == 200, answer.body
    data = answer.json()
    assert data["step_seconds"] == step_hours * 3600
    assert len(data["points"]) == {"1": 24, "7": 28, "30": 30}[days]
    want = expected(hour, int(days), step_hours)
    got = {datetime.fromisoformat(p["start"]): p for p in data["points"] if p["runs"]}
    assert set(got) == set(want)
    for start, w in want.items():
        p = got[start]
        assert (p["traces"], p["runs"], p["errors"]) == (w["traces"], w["runs"], w["errors"])
        assert p["error_rate"] == round(w["errors"] / w["traces"], 4)
        # Percentiles from the rollup's histogram: within its documented error of the exact ones.
        assert close(p["p50"], percentile_cont(w["ms"], 0.5)), (p, w)
        assert close(p["p99"], percentile_cont(w["ms"], 0.99)), (p, w)
    totals = data["totals"]
    all_ms = [ms for w in want.values() for ms in w["ms"]]
    assert totals["traces"] == sum(w["traces"] for w in want.values())
    assert totals["runs"] == sum(w["runs"] for w in want.values())
    assert totals["errors"] == sum(w["errors"] for w in want.values())
    assert close(totals["p99"], percentile_cont(all_ms, 0.99))
    assert data["feedback"] == {}  # the feedback table is there (0006); this project has none
    assert "tokens" in data["series"]  # migration 0007's total_tokens


def test_the_api_refuses_bad_arguments(seeded):
    _, client, session, _ = seeded
    assert api(client, session, "2").status == 400
    assert api(client, "not-a-project", "1").status == 400
    assert api(client, session, "1", key=None).status == 401
    other = api(client, str(uuid.uuid4()), "1").json()  # another project: nothing, not an error
    assert other["totals"]["runs"] == 0 and len(other["points"]) == 24


def test_the_page_shows_the_numbers(browser, seeded):  # noqa: F811
    url, _, session, hour = seeded
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui/projects/{session}/monitor?days=1")
    wait.until(EC.visibility_of_element_located((By.ID, "key-input"))).send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#numbers tbody tr"))
    want = expected(hour, 1, 1)
    rows = browser.find_elements(By.CSS_SELECTOR, "#numbers tbody tr")
    assert len(rows) == 24
    shown = {}
    for row in rows:
        cells = {
            c.get_attribute("data-series"): c.get_attribute("textContent")
            for c in row.find_elements(By.CSS_SELECTOR, "td[data-series]")
        }
        shown[datetime.fromisoformat(row.get_attribute("data-start"))] = cells
    for start, w in want.items():
        cells = shown[start]
        assert (int(cells["traces"]), int(cells["runs"]), int(cells["errors"])) == (
            w["traces"],
            w["runs"],
            w["errors"],
        )
        assert close(float(cells["p99"]), percentile_cont(w["ms"], 0.99))
    assert sum(int(c["runs"]) for c in shown.values()) == sum(w["runs"] for w in want.values())
    # The charts' points carry the same numbers.
    traces_points = browser.find_elements(By.CSS_SELECTOR, ".series[data-series=traces] circle")
    assert sorted(
        int(p.get_attribute("data-value")) for p in traces_points if p.get_attribute("data-value") != "0"
    ) == sorted(w["traces"] for w in want.values())
    p50 = browser.find_elements(By.CSS_SELECTOR, ".series[data-series=p50] circle")
    assert len(p50) == sum(1 for w in want.values() if w["ms"])  # intervals without ended roots: no point
    total = browser.find_element(By.CSS_SELECTOR, "#totals [data-total=traces]")
    assert int(total.get_attribute("data-value")) == sum(w["traces"] for w in want.values())
    # Migration 0007 gives runs their token column: the tokens chart is on (the feedback one is not).
    assert browser.find_element(By.CSS_SELECTOR, "[data-chart=Tokens]").get_attribute("class") == "chart"
    # The window links: 30 days takes the older traces in.
    browser.find_element(By.CSS_SELECTOR, ".windows a[data-days='30']").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#numbers tbody tr")) == 30)
    total = browser.find_element(By.CSS_SELECTOR, "#totals [data-total=traces]")
    assert int(total.get_attribute("data-value")) == len(TRACES) - 1
    assert browser.current_url.endswith("?days=30") and KEY not in browser.current_url


def rows(driver, value: str) -> list:
    """``value`` (a JavaScript expression of the row ``r``) for each row of the trace list."""
    return driver.execute_script(
        f"return [...document.querySelectorAll('#traces tbody tr')].map(r => {value})"
    )


def test_filter_links_round_trip(browser, seeded):  # noqa: F811
    url, _, session, _ = seeded
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{url}/ui?project={session}")
    wait.until(EC.visibility_of_element_located((By.ID, "key-input"))).send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#traces tbody tr")) == len(TRACES))
    # The list may be drawn again while it is read (its previews come after it): each read below is
    # one script, so no element goes stale between finding it and reading it.
    assert rows(browser, "r.querySelector('.input-preview').textContent")[0] == "question 2:40"  # 1st line
    Select(browser.find_element(By.ID, "status")).select_by_value("error")
    name = browser.find_element(By.ID, "name")
    name.send_keys("answ")
    browser.find_element(By.ID, "apply").click()
    wait.until(lambda d: "name=answ" in d.current_url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#traces tbody tr")) == 3)
    link = browser.current_url
    assert f"project={session}" in link and "status=error" in link and KEY not in link
    listed = rows(browser, "r.dataset.traceId")
    assert rows(browser, "r.querySelector('.latency').dataset.ms") == ["300", "50", "600"]
    # The link, opened afresh (same tab: the key is the tab's), shows the same filters and list.
    browser.get("about:blank")
    browser.get(link)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#traces tbody tr")) == 3)
    assert (
        Select(browser.find_element(By.ID, "status")).first_selected_option.get_attribute("value") == "error"
    )
    assert browser.find_element(By.ID, "name").get_attribute("value") == "answ"
    assert rows(browser, "r.dataset.traceId") == listed
    assert (
        browser.find_element(By.ID, "monitor-link")
        .get_attribute("href")
        .endswith(f"/ui/projects/{session}/monitor")
    )


def test_tokens_and_feedback_light_up(settings, seeded):
    """With the token column (as migration 0007 will add it) and feedback (the table of migration
    0006), the same code adds their series to the monitor and their columns to the trace list; made
    in a transaction that is rolled back."""
    _, _, session, hour = seeded
    s = settings
    conn = psycopg2.connect(
        host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, dbname=s.db_name
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '5s'")
            cur.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS total_tokens bigint")  # 0007 adds it
            cur.execute(
                "UPDATE runs SET total_tokens = 10"
                " WHERE tenant = 'viewer' AND session_id = %s AND parent_run_id IS NULL",
                (session,),
            )
            cur.execute(
                "INSERT INTO feedback (tenant, id, run_id, trace_id, key, score, created_at, modified_at)"
                " SELECT tenant, gen_random_uuid(), id, trace_id, 'correct',"
                " 1.0 - (status = 'error')::int, start_time, start_time FROM runs"
                " WHERE tenant = 'viewer' AND session_id = %s AND parent_run_id IS NULL",
                (session,),
            )
            cur.execute(*monitor.features_sql())
            features = monitor.features_of(cur.fetchone())
            assert features == monitor.Features(True, frozenset({"tokens"}))
            sql = monitor.statements(features)
            params = {**monitor.window(1, datetime.now(UTC)), "tenant": "viewer", "session": session}
            rows = []
            for statement in sql:
                cur.execute(statement, params)
                rows.append(cur.fetchall())
            answer = monitor.series(features, params, *rows)
            # The trace list's statement, as the API builds it for this database.
            where = ["r.tenant = %s", "r.posted", "r.session_id = %s", "r.parent_run_id IS NULL"]
            sql, columns = traces_statement(where, features)
            cur.execute(sql, ("viewer", session, 100))
            listed = [(row[5], row[-2:]) for row in cur.fetchall()]
    finally:
        conn.rollback()
        conn.close()
    want = expected(hour, 1, 1)
    assert answer["totals"]["tokens"] == 10 * sum(w["traces"] for w in want.values())
    scores = [p for p in answer["feedback"]["correct"] if p]
    assert sum(p["n"] for p in scores) == sum(w["traces"] for w in want.values())
    slots = {
        datetime.fromisoformat(p["start"]): f
        for p, f in zip(answer["points"], answer["feedback"]["correct"], strict=True)
    }
    for start, w in want.items():
        assert slots[start]["avg"] == pytest.approx(1 - w["errors"] / w["traces"], abs=1e-4)
    json.dumps(answer)  # the answer is JSON as it is
    assert columns == ["tokens", "feedback"] and len(listed) == len(TRACES)
    for status, (tokens, feedback) in listed:
        assert tokens == 10  # the root's; its children have none
        assert feedback == {"correct": 0.0 if status == "error" else 1.0}
