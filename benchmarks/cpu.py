"""Where the CPU of each benchmark round goes: this process, the server, MinIO, PostgreSQL, the machine.

MinIO and PostgreSQL are found by the TCP port they listen on (S3_ENDPOINT_URL, DB_PORT): the
LISTEN socket's inode in ``/proc/net/tcp`` and ``tcp6``, then the process whose ``/proc/<pid>/fd``
holds that socket. So it does not matter who started them (this checkout's ``scripts/services.sh``,
another checkout's, a system service), as long as they run on this machine, in this network
namespace, with a ``/proc`` this user may read. When they do not -- another host, a container whose
port a forwarder such as docker-proxy holds, another user's processes -- their CPU is not measured:
the reports show "n/a" and say why, once.

MinIO is its one process. PostgreSQL is the postmaster and all its children (the backends serving
the connections, the WAL writer, the checkpointer, ...), living or already reaped.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import urlsplit

from handler.server.config import Settings

_TICKS = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # TCP state in /proc/net/tcp
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}
# The services measured besides this process and the server: what each process's name must say.
SERVICES = {"minio": "minio", "postgres": "postgres"}


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int | str) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds a process and its children have used so far: its own, its reaped children's
    (cutime, cstime) and each living child's (with that child's reaped children)."""
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15])
    for child in _children(pid):
        try:
            total += sum(int(f) for f in _stat(child)[11:15])
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited since: its CPU is in the parent's cutime once reaped
    return total / _TICKS


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if path.exists():  # CONFIG_PROC_CHILDREN: one read instead of a scan of /proc
        return [int(p) for p in path.read_text().split()]
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(entry.name)[1]) == pid:
                    children.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return children


def machine_cpu() -> float:
    """CPU seconds all cores of the machine have been busy so far (not idle, not waiting on I/O)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS


def listening_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` in this network namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def pid_holding(inodes: set[str]) -> int | None:
    """A process that has one of these sockets open, among those whose fds this user can read."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return None


def find_service(name: str, host: str, port: int) -> tuple[int | None, str]:
    """The pid of service ``name`` listening on ``host``:``port``, or None and why it is not seen."""
    if host not in _LOCAL_HOSTS:
        return None, f"{name} runs on {host}, not on this machine"
    inodes = listening_inodes(port)
    if not inodes:
        return None, f"nothing in this network namespace listens on port {port} ({name} runs elsewhere)"
    pid = pid_holding(inodes)
    if pid is None:
        return None, f"port {port} is listened on by a process whose /proc this user cannot read"
    command = Path(f"/proc/{pid}/comm").read_text().strip()
    if SERVICES[name] not in command.lower():
        return None, f"port {port} is held by {command!r} (pid {pid}), not {name} itself (a port forwarder?)"
    return pid, ""


@functools.cache
def services() -> dict[str, tuple[int | None, str]]:
    """MinIO's and PostgreSQL's pids (or None and the reason), looked up once per session."""
    settings = Settings.from_env()
    s3 = urlsplit(settings.s3_endpoint_url)
    return {
        "minio": find_service("minio", s3.hostname or "", s3.port or (443 if s3.scheme == "https" else 80)),
        "postgres": find_service("postgres", settings.db_host, settings.db_port),
    }


class CpuMeter:
    """CPU seconds per timed round of each process: this one (the client, or the floor's uploader),
    the server, MinIO, PostgreSQL, and the whole machine. The machine's cores are shared by all of
    them, so these explain a wall time better than any one process does. A service that cannot be
    seen (see the top) has None, and its reason in ``not_measured``."""

    def __init__(self, server_pid: int | None) -> None:
        self.readers = {"client": lambda: process_cpu("self")}
        if server_pid is not None:
            self.readers["server"] = lambda: process_cpu(server_pid)
        self.not_measured: dict[str, str] = {}
        for name, (pid, reason) in services().items():
            if pid is None:
                self.not_measured[name] = reason
            elif name == "postgres":
                self.readers[name] = functools.partial(tree_cpu, pid)
            else:
                self.readers[name] = functools.partial(process_cpu, pid)
        self.readers["machine"] = machine_cpu
        self.used = dict.fromkeys(self.readers, 0.0)
        self.rounds = 0

    def _now(self) -> dict[str, float]:
        return {name: read() for name, read in self.readers.items()}

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        for name, value in self._now().items():
            self.used[name] += value - self._start[name]
        self.rounds += 1

    def per_round(self) -> dict[str, float | None]:
        measured = {name: used / self.rounds for name, used in self.used.items()}
        return measured | dict.fromkeys(self.not_measured)


COLUMNS = ("client", "server", "minio", "postgres")


def summary_lines(cpu: dict[str, dict[str, float | None]], medians: dict[str, float]) -> list[str]:
    """The terminal report's table: CPU ms per round of each benchmark by process, "n/a" for a
    service not measured (and why, once, below the table), "-" for no server (the floors)."""
    lines = []
    for name, used in sorted(cpu.items()):
        shares = "   ".join(f"{who} {_ms(used, who):>8}" for who in COLUMNS)
        lines.append(
            f"{name:<24} {shares}   machine {used['machine'] * 1000:8.1f}   "
            f"cores busy {used['machine'] / medians[name]:4.2f}"
        )
    for name, (pid, reason) in services().items():
        if pid is None:
            lines.append(f"{name}: n/a -- {reason}")
    return lines


def _ms(used: dict[str, float | None], who: str) -> str:
    if who not in used:
        return "-"
    return "n/a" if used[who] is None else f"{used[who] * 1000:.1f}"
