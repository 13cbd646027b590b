"""Command line: ``python -m handler [serve|migrate|rollback|gc|compact|retain|hash-key]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from datetime import UTC, datetime

import ijson
import tornado.httpserver

from handler.maintenance.compact import compact
from handler.maintenance.gc import collect_garbage
from handler.query.backfill import backfill
from handler.retention.sweep import SweepBusy, Sweeper, retain
from handler.runs.budget import Budget
from handler.runs.ingest_handler import InFlight
from handler.server.app import make_app
from handler.server.auth import hash_key
from handler.server.config import Settings, env_file
from handler.server.connections import make_server
from handler.server.listen import bind, check_exposure, urls
from handler.server.workers import prepare_metrics_dir, serve_workers, worker_count
from handler.store.db import Database
from handler.store.migrations import migrate, rollback_last
from handler.store.objects import ObjectStore

log = logging.getLogger("handler")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"


async def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """One server process. ``sockets``: a worker's, bound (and the bucket checked) by its parent."""
    if ijson.backend != "yajl2_c":
        log.warning("ijson is using its %s backend; install yajl2_c support for speed", ijson.backend)
    log.info("ijson backend: %s", ijson.backend)
    if settings.api_keys.open:
        log.warning(
            "NO API KEYS CONFIGURED: anyone who can reach this port can write and read runs "
            "(all in tenant 'default'). Set API_KEYS to require an x-api-key header."
        )
    store = ObjectStore(settings)
    db = Database(settings)
    sweeper = Sweeper(settings, store, db)
    await store.start()
    try:
        if sockets is None:
            await store.ensure_bucket()
        await db.start()
        sweeper.start()
        in_flight = InFlight()
        budget = Budget(settings.max_buffered_bytes, settings.budget_wait_seconds)
        server = make_server(make_app(settings, store, db, in_flight, budget), settings)
        if sockets is not None:
            server.add_sockets(sockets)
            return await wait_and_shut_down(server, in_flight, settings.shutdown_timeout)
        try:
            sockets = bind(settings)
        except OSError as e:
            where = f"{settings.http_host}:{settings.http_port}"
            raise SystemExit(f"run-handler: cannot listen on {where}: {e}") from None
        server.add_sockets(sockets)
        log.info(
            "run-handler listening on %s (bucket %s, database %s)",
            urls(sockets),
            settings.s3_bucket_name,
            settings.db_name,
        )
        await wait_and_shut_down(server, in_flight, settings.shutdown_timeout)
    finally:
        await sweeper.stop()
        await db.close()
        await store.close()


async def wait_and_shut_down(
    server: tornado.httpserver.HTTPServer, in_flight: InFlight, timeout: float
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A worker (handler/workers.py) starts with them blocked: one that came during its start waited.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    await stop.wait()
    await shut_down(server, in_flight, timeout)


async def shut_down(server: tornado.httpserver.HTTPServer, in_flight: InFlight, timeout: float) -> None:
    """Stop accepting, let the batches being received finish (up to ``timeout`` seconds), then
    close what is left: those batches fail cleanly -- their objects are deleted, no row is written."""
    server.stop()
    log.info("stopping: no new connections; waiting up to %ss for %d batch(es)", timeout, in_flight.count)
    if not await in_flight.wait_idle(timeout):
        log.warning("closing %d batch(es) still streaming after %ss", in_flight.count, timeout)
    await server.close_all_connections()
    if in_flight.cleanups:
        await asyncio.wait(list(in_flight.cleanups), timeout=60)
    # A batch that was already committing when its connection closed goes on to its end; the
    # database and the store must outlive it.
    if not await in_flight.wait_idle(60):
        log.error("%d batch(es) still committing after 60 s; stopping anyway", in_flight.count)
    log.info("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m handler")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="apply migrations and serve (the default)")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("rollback", help="roll back the most recent migration")
    gc = commands.add_parser("gc", help="delete objects that no committed run points at")
    gc.add_argument("--grace-seconds", type=int, default=3600, help="only objects older than this")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    packer = commands.add_parser("compact", help="rewrite segments that are mostly dead space")
    packer.add_argument("--grace-seconds", type=int, default=3600, help="only segments older than this")
    packer.add_argument(
        "--min-live", type=float, default=0.5, help="rewrite segments whose live share is below this"
    )
    packer.add_argument("--dry-run", action="store_true", help="report live and dead bytes only")
    commands.add_parser(
        "backfill-query", help="fill the filter columns (tags, metadata, tokens) of runs stored before them"
    )
    retainer = commands.add_parser("retain", help="delete expired traces (README: Retention)")
    retainer.add_argument("--dry-run", action="store_true", help="count what would be deleted")
    retainer.add_argument(
        "--as-of", type=_as_of, help="expire as if it were this ISO 8601 time (UTC when no offset)"
    )
    hasher = commands.add_parser("hash-key", help="print the SHA-256 of an API key (read from stdin)")
    hasher.add_argument("key", nargs="?", help="the key; read from stdin when absent")
    args = parser.parse_args()
    if args.command == "hash-key":
        print(hash_key(args.key if args.key is not None else sys.stdin.readline().strip()))
        return
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    if args.command in (None, "serve"):
        check_exposure(settings)  # before migrations, before anything listens
        if worker_count(settings) > 1:
            prepare_metrics_dir()  # may re-execute this command, before anything else happens
            # Each line says which worker (or the parent) wrote it.
            logging.basicConfig(level=logging.INFO, format=WORKER_LOG_FORMAT, force=True)
    log.info("settings from the environment and %s", env_file())
    if args.command == "rollback":
        log.info("rolled back %d migration(s)", rollback_last(settings))
        return
    log.info("applied %d migration(s)", migrate(settings))
    if args.command == "gc":
        scanned, removed = asyncio.run(collect_garbage(settings, args.grace_seconds, args.dry_run))
        verb = "would delete" if args.dry_run else "deleted"
        log.info("gc: %d objects scanned, %s %d without a run or unfinished", scanned, verb, removed)
    elif args.command == "backfill-query":
        filled, failed = asyncio.run(backfill(settings))
        log.info("backfill-query: %d runs filled, %d could not be read (see above)", filled, failed)
    elif args.command == "compact":
        try:
            r = asyncio.run(compact(settings, args.grace_seconds, args.min_live, args.dry_run))
        except ValueError as e:
            raise SystemExit(f"run-handler: {e}") from None
        log.info(
            "compact: %d segments, %d bytes stored, %d live, %d dead; %s %d segments, freeing %d bytes",
            r.segments,
            r.stored_bytes,
            r.live_bytes,
            r.stored_bytes - r.live_bytes,
            "would rewrite" if args.dry_run else "rewrote",
            r.rewritten,
            r.freed_bytes,
        )
    elif args.command == "retain":
        try:
            report = asyncio.run(retain(settings, args.as_of, args.dry_run))
        except SweepBusy as e:
            raise SystemExit(f"run-handler: {e}; try again when it has finished") from None
        log.info("%s", report.line(args.dry_run))
    elif args.command in (None, "serve") and worker_count(settings) > 1:
        sys.exit(serve_workers(settings, worker_count(settings), serve))
    elif args.command in (None, "serve"):
        asyncio.run(serve(settings))


def _as_of(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


if __name__ == "__main__":
    main()
