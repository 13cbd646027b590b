"""Where the server listens: loopback by default, and it will not serve open to the network unasked.

Bound addresses are read from the kernel -- the server process's own listening sockets, matched by
inode in ``/proc/<pid>/net/tcp`` and ``tcp6`` -- not inferred from what a connection can reach.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT, Settings
from handler.server.listen import is_loopback
from tests.runs import batch, run
from tests.server import free_port, start_server

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
KEY = "listen-secret-key"

pytestmark = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} hold addresses as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process ``pid`` is listening on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


def ipv6_loopback_up() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def clean_env(monkeypatch):
    """No listening or access settings from the developer's shell."""
    for name in ("HTTP_HOST", "OPEN_ACCESS", "API_KEYS"):
        monkeypatch.delenv(name, raising=False)


def serves(srv, headers: dict | None = None) -> None:
    one = run()
    response = srv.client.post(batch(one), headers=headers or {})
    assert response.status == 201, response.body
    (run_id,) = response.json()["ids"]
    assert srv.client.get(f"/runs/{run_id}", headers=headers or {}).json() == {**one, "id": run_id}


def test_the_default_listens_on_loopback_only(tmp_path, clean_env):
    srv = start_server(tmp_path, "default-host")
    try:
        port = srv.client.port
        bound = listening(srv.process.pid)
        expected = {("127.0.0.1", port)} | ({("::1", port)} if ipv6_loopback_up() else set())
        assert bound == expected
        serves(srv)
    finally:
        srv.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_an_open_server_on_the_network_refuses_to_start(tmp_path, clean_env, host):
    port = free_port()
    env = {**os.environ, "RUN_HANDLER_ENV": "test", "HTTP_PORT": str(port), "HTTP_HOST": host}
    # The timeout only stops a server that wrongly started; a refusal comes long before it.
    done = subprocess.run(
        [sys.executable, "-m", "handler", "serve"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, said before migrations or anything else
    assert "API_KEYS" in lines[0] and "OPEN_ACCESS=true" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    # Nothing was left listening on the port.
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))


def test_the_network_with_api_keys(tmp_path, clean_env):
    srv = start_server(tmp_path, "keyed-any", HTTP_HOST="0.0.0.0", API_KEYS=f"listen:{hash_key(KEY)}")
    try:
        assert listening(srv.process.pid) == {("0.0.0.0", srv.client.port)}
        assert srv.client.post(batch(run())).status == 401
        serves(srv, {"x-api-key": KEY})
    finally:
        srv.stop()


def test_the_network_open_on_purpose(tmp_path, clean_env):
    srv = start_server(tmp_path, "open-any", HTTP_HOST="0.0.0.0", OPEN_ACCESS="true")
    try:
        assert listening(srv.process.pid) == {("0.0.0.0", srv.client.port)}
        serves(srv)
        assert "NO API KEYS CONFIGURED" in open(srv.log_path).read()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
    ],
)
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_open_access_must_be_true_or_false(clean_env, monkeypatch):
    monkeypatch.setenv("OPEN_ACCESS", "yes please")
    with pytest.raises(SystemExit, match="OPEN_ACCESS must be true or false"):
        Settings.from_env()
    monkeypatch.setenv("OPEN_ACCESS", "TRUE")
    assert Settings.from_env().open_access is True
