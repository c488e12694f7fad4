"""Small helpers for the servers tests start: a free loopback port, and stopping a server process."""

from __future__ import annotations

import socket
import subprocess


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, grace_seconds: float = 10) -> None:
    """Terminate ``process``, killing it if it has not exited after ``grace_seconds``."""
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
