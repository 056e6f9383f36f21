"""A real forward proxy for the tests: Debian's tinyproxy, started on 127.0.0.1 by a test.

Not a mock: the CONNECT tunnels, the 407s and the refusals are tinyproxy's own. Its outgoing
connections leave from 127.0.0.2 (`Bind`), so the sandbox's request log (`peer`) shows which
requests came through the proxy and which came direct; its log file lists every CONNECT.
`make system-deps` installs it (package tinyproxy-bin); without it these tests skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PROXY_PEER = "127.0.0.2"  # where the proxy's own connections come from


def tinyproxy_path() -> str | None:
    return shutil.which("tinyproxy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tinyproxy:
    """tinyproxy on 127.0.0.1:`port`: `auth` (user, password) makes it ask for Basic
    credentials; `connect_ports` limits the ports it opens tunnels to (others get 403)."""

    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None,
                 connect_ports: Sequence[int] = ()) -> None:
        binary = tinyproxy_path()
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (make system-deps)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "tinyproxy.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", f"Bind {PROXY_PEER}", "Timeout 30",
                 f'LogFile "{self.log}"', "LogLevel Connect", "MaxClients 50",
                 "Allow 127.0.0.1", "DisableViaHeader Yes"]
        if auth is not None:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        lines += [f"ConnectPort {p}" for p in connect_ports]
        conf = workdir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.process = subprocess.Popen([binary, "-d", "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening(10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def connects(self) -> list[str]:
        """The CONNECT requests tinyproxy logged ("CONNECT host:port HTTP/1.1")."""
        if not self.log.exists():
            return []
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [line.split("): ", 1)[1] for line in text.splitlines()
                if "Request (file descriptor" in line and "): CONNECT " in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("tinyproxy did not start listening") from None
                time.sleep(0.02)  # polling a condition with a deadline, not a fixed wait
