"""Busy ports as one line naming the port and the flag, not a bind traceback.

gRPC reports a taken port with a C-core log line and ``RuntimeError: Failed to bind``, and the
metrics endpoint with a bare ``OSError: [Errno 98]``. The gRPC port is tried with a plain socket
first (as gRPC binds it: SO_REUSEADDR on, SO_REUSEPORT off), so the common case never reaches
gRPC's log.
"""

from __future__ import annotations

import errno
import socket


class PortInUseError(Exception):
    """A port samplerd was told to listen on is taken (or not ours to bind)."""

    def __init__(self, host: str, port: int, flag: str, reason: str = "already in use") -> None:
        super().__init__(f"cannot listen on {host}:{port} ({flag}): {reason}; pick another port with {flag} "
                         "(0 = any free port)")
        self.port = port
        self.flag = flag


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound; port 0 always can."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # an unresolvable host is gRPC's to report
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise port_error(error, host, port, flag) from None


def port_error(error: OSError, host: str, port: int, flag: str) -> PortInUseError | OSError:
    """The :class:`PortInUseError` for a bind failure (other OSErrors unchanged)."""
    if error.errno == errno.EADDRINUSE:
        return PortInUseError(host, port, flag)
    if error.errno == errno.EACCES:
        return PortInUseError(host, port, flag, "permission denied (ports below 1024 need privileges)")
    if error.errno == errno.EADDRNOTAVAIL:
        return PortInUseError(host, port, flag, "no such address on this machine")
    return error
