"""Run the sandbox: in-process on a background thread (tests), or in the foreground (CLI)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from analytics_dagster.sandbox.app import DEFAULT_PATH_PREFIX, SandboxApp, SandboxConfig
from analytics_dagster.sandbox.world import World


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # listening before the URL is announced: early clients wait, not fail
    return sock


class SandboxServer:
    """The sandbox API on `host:port` (port 0: a free one), started and stopped in-process.

    Its API's paths are under `path_prefix` (`/v1`, the seed API's; `""`: at the root, as
    Paddle's own API serves them).

    Example:
        >>> with SandboxServer(World(customers=20, seed=1)) as server:
        ...     requests.get(server.url + "/v1/customers", headers=server.auth_header)
    """

    def __init__(
        self,
        world: World | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SandboxConfig | None = None,
        path_prefix: str = DEFAULT_PATH_PREFIX,
    ) -> None:
        self.app = SandboxApp(world or World(), config, path_prefix=path_prefix)
        self._socket = _bind(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app.asgi, log_level="warning", access_log=False, lifespan="off",
                timeout_keep_alive=30, backlog=2048,
                date_header=False,  # the app sends the world clock's Date
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def world(self) -> World:
        return self.app.world

    @property
    def config(self) -> SandboxConfig:
        return self.app.config

    @property
    def path_prefix(self) -> str:
        return self.app.path_prefix

    @property
    def url(self) -> str:
        """The server's root URL: the API's paths (`/v1/customers`, or `/customers` with no
        prefix) and the admin interface (`/_admin/...`) go after it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"}

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (SIGINT/SIGTERM)."""
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 30.0) -> "SandboxServer":
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name=f"sandbox-{self.port}",
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
