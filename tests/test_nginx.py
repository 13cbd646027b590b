"""deploy/nginx.conf in front of two server instances, through a real nginx.

nginx is Debian's (``make test-setup`` installs it when run as root); without it these tests are
skipped and say why. The config is deploy/nginx.conf itself, with the test's ports put in: the
upstream's two ``server`` lines and the ``listen`` port.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.client import HttpClient
from tests.nginx import NGINX, start_nginx
from tests.runs import batch, run
from tests.server import start_server
from tests.test_faults import body_parts, row_count, runs_with_ids, send_first_half

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx not found: install it (Debian: apt-get install nginx; make test-setup does as root)",
)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """Two instances and nginx before them: (proxy client, instance a, instance b)."""
    tmp = tmp_path_factory.mktemp("nginx")
    a = start_server(tmp, "instance-a")
    b = start_server(tmp, "instance-b")
    try:
        nginx = start_nginx(tmp / "prefix", [a.client.port, b.client.port])
    except BaseException:
        a.stop()
        b.stop()
        raise
    try:
        yield HttpClient("127.0.0.1", nginx.port), a, b
    finally:
        nginx.stop()
        a.stop()
        b.stop()


def test_runs_reach_the_bucket_through_the_proxy_before_the_body_ends(front, store, db):
    proxy, a, _ = front
    runs = runs_with_ids(10)
    # The first half must be stored while the request is still open (within SEGMENT_MAX_WAIT_MS):
    # an nginx that buffered the body would pass on nothing before its end.
    conn = send_first_half(SimpleNamespace(client=proxy), store, runs)
    assert row_count(db, [r["id"] for r in runs]) == 0
    proxy.send_chunk(conn, body_parts(runs)[1])
    response = proxy.finish(conn)
    assert response.status == 201, response.body
    assert response.json()["ids"] == [r["id"] for r in runs]
    got = a.client.get(f"/runs/{runs[0]['id']}")
    assert got.status == 200 and json.loads(got.body) == runs[0]


def test_every_run_posted_through_the_proxy_reads_back_through_both_instances(front):
    proxy, a, b = front
    posted: dict[str, bytes] = {}
    for _ in range(6):
        runs = [run(id=str(uuid.uuid4()), inputs={"text": "é☃🙂" * 50}) for _ in range(5)]
        response = proxy.post(batch(*runs))
        assert response.status == 201, response.body
        posted.update({r["id"]: json.dumps(r).encode() for r in runs})
    for instance in (a, b):
        for run_id, sent in posted.items():
            got = instance.client.get(f"/runs/{run_id}")
            assert got.status == 200 and got.body == sent
    # nginx spread the batches over both instances (least_conn, ties taken in turn).
    for instance in (a, b):
        assert "handler.access: POST /runs 201" in Path(instance.log_path).read_text()


def test_a_run_posted_to_one_instance_reads_back_through_the_other_and_the_proxy(front):
    proxy, a, b = front
    r = run(id=str(uuid.uuid4()))
    assert a.client.post(batch(r)).status == 201
    for client in (b.client, proxy):
        got = client.get(f"/runs/{r['id']}")
        assert got.status == 200 and json.loads(got.body) == r


def test_a_refused_batch_through_the_proxy_leaves_nothing(front, store, db):
    proxy, _, _ = front
    runs = runs_with_ids(20)
    before = store.snapshot()
    good = b"[" + batch(*runs)[1:-1]
    response = proxy.post([good[i : i + 4096] for i in range(0, len(good), 4096)] + [b', {"name": oops}]'])
    assert response.status == 400, response.body
    assert "error" in response.json()
    store.assert_unchanged(before, timeout=10)
    assert row_count(db, [r["id"] for r in runs]) == 0
