"""Is a port free to listen on? One probe for the gateway, the runner SDK and
the CLI, so that a port in use is one clear line everywhere, never a traceback
from deep inside a server."""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """Something already listens on the address. `flag` names the option
    that chooses another address, when the caller knows it."""

    def __init__(self, host: str, port: int, flag: str | None = None) -> None:
        super().__init__(f"port {port} on {host} is in use")
        self.host, self.port, self.flag = host, port, flag


def ensure_free(address: str) -> None:
    """Raise PortInUse if something listens on `address` (`HOST:PORT`).

    Port 0 and addresses that are not `HOST:PORT` (a `unix:` path) are left
    to the server. SO_REUSEADDR as the servers set it: a socket in TIME_WAIT
    is no conflict, a listening one is."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host or "every address", int(port)) from None
            raise
