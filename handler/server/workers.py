"""WORKERS > 1: one parent that binds the port and supervises N forked server processes.

The parent applies migrations (in ``__main__``), checks the bucket, binds the listening sockets,
and forks the workers, which all accept on those same sockets: a connection waits in the one
shared backlog until some worker takes it, so a worker that dies loses no connection that it had
not yet accepted. Each worker opens its own PostgreSQL pool and S3 client after the fork (event
loops and sockets must not cross a fork). A worker that dies is logged and replaced; SIGTERM (or
SIGINT) to the parent is passed on to every worker, each drains its batches as a single server
does, and the parent exits 0 once all of them have.

``tornado.process.fork_processes`` is not used: its parent dies of a SIGTERM without passing it
on, orphaning the workers. Metrics are shared through prometheus_client's multiprocess mode (see
``prepare_metrics_dir``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from handler.server.config import Settings
from handler.server.listen import bind, urls
from handler.store.objects import ObjectStore

log = logging.getLogger("handler")

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_OWNED = "RUN_HANDLER_OWNS_METRICS_DIR"  # set when the directory is the server's own temporary one
# A worker that exits sooner than this after its start did not start; this many in a row and
# the parent stops (a database that refuses every connection must not become a fork loop).
FAILED_START_S = 3.0
MAX_FAILED_STARTS = 5
# Beyond SHUTDOWN_TIMEOUT, what a worker's shut_down may still spend: aborting the closed batches
# (up to 60 s) and letting committing ones end (up to 60 s).
DRAIN_MARGIN_S = 125.0
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
# The single server's own loop (handler.__main__.serve), run by each worker on the shared sockets.
Serve = Callable[[Settings, list[socket.socket]], Awaitable[None]]


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def prepare_metrics_dir() -> None:
    """Make sure prometheus_client runs in multiprocess mode, then return; re-executes this same
    command line first if it must.

    prometheus_client picks its value store when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``,
    and every handler module imports it. So the first time through, the directory is created and
    the command re-executed (same pid) with the variable set. A directory the operator set is used
    as it is; either way the files of an earlier server in it are removed.
    """
    if METRICS_DIR not in os.environ:
        os.environ[METRICS_DIR] = tempfile.mkdtemp(prefix="run-handler-metrics-")
        os.environ[_OWNED] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    directory = Path(os.environ[METRICS_DIR])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def remove_metrics_dir() -> None:
    directory = Path(os.environ[METRICS_DIR])
    if os.environ.get(_OWNED) == "1":
        shutil.rmtree(directory, ignore_errors=True)
    else:
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


async def _check_bucket(settings: Settings) -> None:
    store = ObjectStore(settings)
    await store.start()
    try:
        await store.ensure_bucket()
    finally:
        await store.close()


def check_bucket_in_child(settings: Settings) -> None:
    """Check (or create) the bucket from a short-lived child process.

    Not in the parent itself: its event loop resolves names in threads, and a fork taken while
    one of them holds glibc's resolver lock leaves every worker blocked on that lock at its first
    connection. The parent runs no event loop and no thread before it forks its workers.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.run(_check_bucket(settings))
            code = 0
        except BaseException:  # noqa: BLE001 -- reported here, the parent only sees the status
            log.exception("cannot use bucket %s", settings.s3_bucket_name)
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run-handler: cannot use bucket {settings.s3_bucket_name} (see the log above)")


class Supervisor:
    """The parent: forks the workers, replaces the ones that die, stops them all on SIGTERM."""

    def __init__(self, settings: Settings, count: int, sockets: list[socket.socket], serve: Serve) -> None:
        self.settings = settings
        self.serve = serve
        self.count = count
        self.sockets = sockets
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, start time)
        self.failed_starts = 0

    def start(self, slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._run_worker(slot, parent)  # never returns
        self.workers[pid] = (slot, time.monotonic())
        log.info("worker %d started (pid %d)", slot, pid)

    def _run_worker(self, slot: int, parent: int) -> None:
        code = 1
        try:
            _die_with(parent)
            # SIGTERM and SIGINT stay blocked until serve() has its handlers for them: one sent
            # while this worker starts is held until then, and then stops it cleanly.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            asyncio.run(self.serve(self.settings, self.sockets))
            code = 0
        except BaseException:  # noqa: BLE001 -- a worker must end here, never return into the parent's loop
            log.exception("worker %d failed", slot)
        finally:
            logging.shutdown()
            os._exit(code)

    def reap(self) -> list[tuple[int, int, str]]:
        """(slot, pid, how it ended) of each worker that has exited since the last call."""
        ended = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot, started = self.workers.pop(pid, (None, 0.0))
            if slot is None:
                continue
            _mark_dead(pid)
            if os.WIFSIGNALED(status):
                how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            else:
                how = f"exit status {os.waitstatus_to_exitcode(status)}"
            if time.monotonic() - started < FAILED_START_S:
                self.failed_starts += 1
            else:
                self.failed_starts = 0
            ended.append((slot, pid, how))
        return ended

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the parent's exit status."""
        # A handler, so that no kernel may drop a blocked SIGCHLD as ignored; sigwaitinfo takes them.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for slot in range(self.count):
            self.start(slot)
        log.info(
            "run-handler listening on %s with %d workers (bucket %s, database %s)",
            urls(self.sockets),
            self.count,
            self.settings.s3_bucket_name,
            self.settings.db_name,
        )
        while True:
            info = signal.sigwaitinfo(_SIGNALS)
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self.stop(signal.Signals(info.si_signo).name)
            for slot, pid, how in self.reap():
                if self.failed_starts >= MAX_FAILED_STARTS:
                    log.error(
                        "worker %d (pid %d) %s: %d failed starts in a row; stopping",
                        slot,
                        pid,
                        how,
                        self.failed_starts,
                    )
                    self.stop("failed starts")
                    return 1
                log.error("worker %d (pid %d) %s; starting a replacement", slot, pid, how)
                self.start(slot)

    def stop(self, why: str) -> int:
        log.info("%s: stopping %d workers", why, len(self.workers))
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + DRAIN_MARGIN_S
        status = 0
        while self.workers:
            for slot, pid, how in self.reap():
                if how != "exit status 0":
                    log.error("worker %d (pid %d) %s while stopping", slot, pid, how)
                    status = 1
            left = deadline - time.monotonic()
            if not self.workers:
                break
            if left <= 0:
                log.error(
                    "%d workers still running after %.0f s; killing them",
                    len(self.workers),
                    self.settings.shutdown_timeout + DRAIN_MARGIN_S,
                )
                for pid in self.workers:
                    _signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                status = 1
                continue
            signal.sigtimedwait({signal.SIGCHLD}, min(left, 1.0))
        log.info("stopped")
        return status


def _die_with(parent: int) -> None:
    """A parent killed outright (kill -9) takes its workers with it (Linux: SIGKILL, which works
    even on a worker that is still starting), so no worker is left serving on its own; elsewhere,
    a worker outlives such a parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def serve_workers(settings: Settings, count: int, serve: Serve) -> int:
    """The parent of ``count`` workers, each running ``serve``; returns its exit status."""
    check_bucket_in_child(settings)
    try:
        sockets = bind(settings)
    except OSError as e:
        where = f"{settings.http_host}:{settings.http_port}"
        raise SystemExit(f"run-handler: cannot listen on {where}: {e}") from None
    log.info("metrics of the workers in %s", os.environ[METRICS_DIR])
    try:
        return Supervisor(settings, count, sockets, serve).run()
    finally:
        for sock in sockets:
            sock.close()
        remove_metrics_dir()
