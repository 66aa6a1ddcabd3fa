"""Shared by the serving benchmarks: wait for a freshly started `opengpt4 serve` to answer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_until_ready(server: subprocess.Popen, base: str, log: Path, timeout_s: float = 300) -> None:
    """Poll /healthz until it is 200 (the server loads its model first); on a dead or late
    server, kill it and exit with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"server ({log}) did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
