"""API keys and tenants, end to end: keys are required when configured, and tenants never meet."""

from __future__ import annotations

import uuid

import pytest

from handler.server.auth import ApiKeys, hash_key
from tests.runs import batch, run
from tests.server import start_server

ALPHA, BETA = "alpha-secret-key", "beta-secret-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("keyed"),
        "keyed",
        API_KEYS=f"alpha:{hash_key(ALPHA)}, beta:{hash_key(BETA)}",
    )
    yield srv
    srv.stop()


def test_requests_without_a_valid_key_are_401(keyed_server, store):
    client = keyed_server.client
    before = store.snapshot()
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": ""}, {"x-api-key": hash_key(ALPHA)}):
        response = client.post(batch(run()), headers=headers)
        assert response.status == 401, headers
        assert "x-api-key" in response.json()["error"]
        assert client.get(f"/runs/{uuid.uuid4()}", headers=headers).status == 401
    store.assert_unchanged(before)


def test_each_tenant_sees_only_its_own_runs(keyed_server, db):
    client = keyed_server.client
    shared_id = str(uuid.uuid4())
    alpha_run, beta_run = run(id=shared_id, name="alpha's"), run(id=shared_id, name="beta's")
    # The same id in two tenants: no 409, so no tenant learns another's ids.
    assert client.post(batch(alpha_run), headers={"x-api-key": ALPHA}).status == 201
    assert client.post(batch(beta_run), headers={"x-api-key": BETA}).status == 201
    assert client.get(f"/runs/{shared_id}", headers={"x-api-key": ALPHA}).json() == alpha_run
    assert client.get(f"/runs/{shared_id}", headers={"x-api-key": BETA}).json() == beta_run
    only_alpha = run()
    (alpha_id,) = client.post(batch(only_alpha), headers={"x-api-key": ALPHA}).json()["ids"]
    assert client.get(f"/runs/{alpha_id}", headers={"x-api-key": BETA}).status == 404
    # Each tenant's runs live in objects under its own prefix.
    with db.cursor() as cur:
        cur.execute("SELECT tenant, object_key FROM runs WHERE id = %s", (shared_id,))
        stored = cur.fetchall()
    assert sorted(tenant for tenant, _ in stored) == ["alpha", "beta"]
    assert all(key.startswith(f"{tenant}/segments/") for tenant, key in stored)


def test_open_server_says_so_at_start(server):
    assert "NO API KEYS CONFIGURED" in open(server.log_path).read()


@pytest.mark.parametrize(
    "setting, words",
    [
        ("alpha:" + "0" * 63, "SHA-256"),
        ("alpha:my-plain-key", "SHA-256"),
        ("../etc:" + "0" * 64, "must match"),
        ("Alpha:" + "0" * 64, "must match"),
    ],
)
def test_bad_api_keys_settings_are_refused(setting, words):
    with pytest.raises(ValueError, match=words):
        ApiKeys(setting)
