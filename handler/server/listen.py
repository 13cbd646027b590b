"""Where the server listens: loopback unless told otherwise, and never open to the network by accident."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

import tornado.netutil

from handler.server.config import DEFAULT_HTTP_HOST, Settings

log = logging.getLogger("handler")

# The default, ``localhost``, means these two, whatever the resolver says ``localhost`` is; ``::1``
# only where IPv6 is up.
LOOPBACK = ("127.0.0.1", "::1")


def host_addresses(host: str) -> list[str]:
    """The IP addresses ``host`` stands for (an empty host means every interface)."""
    if host == DEFAULT_HTTP_HOST:
        return list(LOOPBACK)
    if not host:
        return ["0.0.0.0", "::"]
    infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return sorted({info[4][0] for info in infos})


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one (a name that does not resolve is not)."""
    try:
        addresses = host_addresses(host)
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(settings: Settings) -> None:
    """Refuse, before anything listens, to serve without API keys beyond loopback unless asked to."""
    if settings.api_keys.open and not settings.open_access and not is_loopback(settings.http_host):
        raise SystemExit(
            f"run-handler: refusing to start: HTTP_HOST={settings.http_host!r} is not loopback-only and no "
            "API_KEYS are configured, so anyone on the network could write and read runs; configure API_KEYS "
            "(see `python -m handler hash-key`), or set OPEN_ACCESS=true to serve open on purpose"
        )


def bind(settings: Settings) -> list[socket.socket]:
    """Listening sockets for ``HTTP_HOST`` and ``HTTP_PORT``."""
    port = settings.http_port
    if settings.http_host != DEFAULT_HTTP_HOST:
        return tornado.netutil.bind_sockets(port, settings.http_host or None)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    if socket.has_ipv6:
        try:
            sockets += tornado.netutil.bind_sockets(port, "::1", socket.AF_INET6)
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                for sock in sockets:
                    sock.close()
                raise
            log.info("IPv6 loopback unavailable (%s); listening on 127.0.0.1 only", e.strerror)
    return sockets


def urls(sockets: list[socket.socket]) -> str:
    """``http://127.0.0.1:8000, http://[::1]:8000`` for the log."""
    names = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        names.append(f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}")
    return ", ".join(names)
