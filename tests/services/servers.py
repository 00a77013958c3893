"""Real services for the scale-out tests, started by the suite itself on a fresh machine.

- :class:`Postgres`: a PostgreSQL server of the ``pgserver`` package (server binaries installed
  by ``pip install -e ".[dev]"``; as root it runs as the system user ``pgserver``), reached
  through a Unix socket; ``database(name)`` creates a database and returns its URL.
- :class:`MlflowServer`: ``mlflow server`` on a free local port, as the README starts it.
- ``Link``: a TCP relay in front of a server whose ``cut()`` drops every connection and refuses
  new ones, which is what a client sees when the server's process dies.

- :func:`isdm`, :func:`isdm_env`, :func:`write_config`: ``isdm`` as a separate process.

Every server started here runs in its own process group and is stopped with it
(:meth:`Service.stop`). The session fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = REPO / "configs" / "tiny.yaml"
# MLflow's job runners (7 processes, for GenAI jobs) are not used by isdm: left off, the server
# starts in seconds on a busy machine
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A server process in its own process group, its output in ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: Optional[dict] = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **SERVER_ENV, **(env or {})},
                                         start_new_session=True)

    def wait_http(self, url: str, timeout: float = 180) -> None:
        """Until ``url`` answers 200 (the process must stay up meanwhile)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{url}: the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"{url}: no answer after {timeout:g} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class MlflowServer(Service):
    """``mlflow server`` as the README runs it, on a free port, started at once; :attr:`url`
    waits until it answers (the first access), so the caller can work meanwhile."""

    def __init__(self, backend: str, artifacts: Path, log: Path) -> None:
        self.port = free_port()
        super().__init__([str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
                          "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                          "--port", str(self.port), "--workers", "1"], log)
        self._ready = False

    @property
    def url(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        if not self._ready:
            self.wait_http(url + "/health")
            self._ready = True
        return url


class Postgres:
    def __init__(self, server) -> None:
        self.server = server

    def database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL (Unix socket of this server)."""
        self.server.psql(f"CREATE DATABASE {name};")
        return self.server.get_uri(name)


class Link:
    """A TCP relay ``127.0.0.1:<port>`` -> ``target``; :meth:`cut` is the server dying."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); new connections are refused
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def isdm_env(**extra: str) -> dict[str, str]:
    """The environment of an ``isdm`` process: this one's (offline, PYTHONPATH) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", **extra)
    return env


def isdm(*args: str, env: Optional[dict] = None, cwd: Optional[Path] = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    """``isdm ARGS`` as a separate process; its completed process (rc not checked)."""
    return subprocess.run([str(BIN / "isdm"), *args], env=env or isdm_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, **sections: dict) -> Path:
    """``configs/tiny.yaml`` with ``sections`` merged in, written to ``path``."""
    tree = yaml.safe_load(TINY.read_text())
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
