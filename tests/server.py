"""Start the real server, ``python -m handler``, as a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from handler.server.config import REPO_ROOT, Settings
from tests.client import HttpClient


def run_handler(*args: str) -> str:
    """Run ``python -m handler ARGS`` with the test settings to its end; returns what it logged."""
    result = subprocess.run(
        [sys.executable, "-m", "handler", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "RUN_HANDLER_ENV": "test"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    client: HttpClient
    bucket: str
    log_path: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(tmp_dir: Path, name: str, **env: str) -> Server:
    """Start ``python -m handler`` on a free port with extra settings; wait until it answers."""
    port = free_port()
    log_path = str(tmp_dir / f"{name}.log")
    environment = {**os.environ, "RUN_HANDLER_ENV": "test", "HTTP_PORT": str(port), **env}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "handler", "serve"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{open(log_path).read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"server did not listen in 30 s:\n{open(log_path).read()}")
    bucket = env.get("S3_BUCKET_NAME") or Settings.from_env().s3_bucket_name
    return Server(process, HttpClient("127.0.0.1", port), bucket, log_path)
