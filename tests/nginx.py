"""Start Debian's nginx with deploy/nginx.conf in front of given ports (tests and benchmarks)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from handler.server.config import REPO_ROOT
from tests.server import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
CONFIG = REPO_ROOT / "deploy" / "nginx.conf"


def nginx_config(listen: int, upstreams: list[int]) -> str:
    """deploy/nginx.conf with its upstream ``server`` lines and its ``listen`` port replaced."""
    text = CONFIG.read_text()
    servers = "".join(f"        server 127.0.0.1:{port};\n" for port in upstreams)
    text, n = re.subn(r"(?:^ *server 127\.0\.0\.1:\d+;\n)+", servers, text, count=1, flags=re.M)
    assert n == 1, "deploy/nginx.conf: no upstream server lines to replace"
    text, n = re.subn(r"^( *)listen \d+;", rf"\1listen 127.0.0.1:{listen};", text, count=1, flags=re.M)
    assert n == 1, "deploy/nginx.conf: no listen line to replace"
    return text


@dataclass
class Nginx:
    process: subprocess.Popen
    port: int
    log_path: Path

    def stop(self) -> None:
        self.process.terminate()  # nginx's fast shutdown; its workers exit with it
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_nginx(prefix: Path, upstreams: list[int]) -> Nginx:
    """nginx in the foreground (its own pid, no daemon), its files under ``prefix``."""
    if NGINX is None:
        raise RuntimeError("nginx not found (Debian: apt-get install nginx)")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(port, upstreams))
    # As root its workers would run as nobody, who cannot enter a 0700 temporary directory.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    log_path = prefix / "nginx.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", directives],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    nginx = Nginx(process, port, log_path)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited at start:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return nginx
        except OSError:
            if time.monotonic() >= deadline:
                nginx.stop()
                raise RuntimeError(f"nginx did not listen in 20 s:\n{log_path.read_text()}") from None
            time.sleep(0.1)
