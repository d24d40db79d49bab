"""The one way tests pick a port: one the OS hands out now, with nothing listening on it once
this returns (a server told to bind it, or an address that refuses connections)."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that was free a moment ago.

    Args:
        host: the address to bind.

    Returns:
        The port number; the socket that found it is closed again.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
