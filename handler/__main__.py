"""Command line: ``python -m handler [serve|migrate|rollback]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import ijson
import tornado.httpserver

from handler.app import make_app
from handler.config import Settings, env_file
from handler.db import Database
from handler.migrations import migrate, rollback_last
from handler.storage import ObjectStore

log = logging.getLogger("handler")


async def serve(settings: Settings) -> None:
    if ijson.backend != "yajl2_c":
        log.warning("ijson is using its %s backend; install yajl2_c support for speed", ijson.backend)
    log.info("ijson backend: %s", ijson.backend)
    store = ObjectStore(settings)
    db = Database(settings)
    await store.start()
    try:
        await store.ensure_bucket()
        await db.start()
        server = tornado.httpserver.HTTPServer(make_app(settings, store, db), idle_connection_timeout=300)
        server.listen(settings.http_port)
        log.info(
            "run-handler listening on http://localhost:%d (bucket %s, database %s)",
            settings.http_port,
            settings.s3_bucket_name,
            settings.db_name,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        server.stop()
        await server.close_all_connections()
    finally:
        await db.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m handler")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate", "rollback"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    log.info("settings from the environment and %s", env_file())
    if args.command == "rollback":
        log.info("rolled back %d migration(s)", rollback_last(settings))
        return
    log.info("applied %d migration(s)", migrate(settings))
    if args.command == "serve":
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
