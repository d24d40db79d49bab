"""The one way a service's main() runs its server: build it from flags, start it, print the line
scripts and tests wait for, then serve until SIGTERM/SIGINT and stop gracefully (in-flight calls
finish within the server's grace period; a second signal kills at once)."""
from __future__ import annotations

import logging
import signal
import sys
from typing import Callable, Protocol

from segxal.errors import SegxalError


class _Server(Protocol):
    target: str

    def start(self) -> int: ...
    def stop(self) -> None: ...
    def wait(self) -> None: ...


def serve_until_signal(name: str, banner: str, build: Callable[[], _Server], verbose: bool = False) -> int:
    """Args:
        name: prefix of error lines ("eem", "trainer").
        banner: printed once started, with "{port}" and "{target}" filled in
            ("trainer listening on port {port}").
        build: makes the server from the already parsed configuration (may raise our errors).

    Returns: the process exit code (2 when the configuration or the port is refused).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = build()
        port = server.start()
    except (SegxalError, OSError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    print(banner.format(port=port, target=server.target), flush=True)

    def _stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait()
    return 0
