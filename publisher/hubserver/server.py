"""Running the local Hub: in a background thread (`LocalHub`, for tests and the demo) or in the
foreground (`serve`, `main_serve`, for `publisher hub serve`), and pointing huggingface_hub at it
(`hub_client_env`).

huggingface_hub reads most of its settings **once, at import time**, into
`huggingface_hub.constants`: `ENDPOINT` (and `HUGGINGFACE_CO_URL_TEMPLATE`, the download URL
built from it), `HF_HUB_DISABLE_XET`, `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE`,
`HF_TOKEN_PATH`. Setting `os.environ` after the import changes nothing for those. Only `HF_TOKEN`
is read at call time. `hub_client_env` sets both the environment (for subprocesses) and the
constants (for this process), and puts everything back on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from publisher.hubserver.app import create_app
from publisher.hubserver.auth import DEFAULT_USER
from publisher.hubserver.faults import FaultInjector, HubStats

logger = logging.getLogger("publisher.hubserver")

TOKEN_ENV = "PUBLISHER_HUB_TOKEN"
"""Environment variable `main_serve` reads the accepted token from (any token if unset)."""

TEST_API_ENV = "PUBLISHER_HUB_TEST_API"
"""Set to 1 for `main_serve` to serve `/_publisher/faults` and `/_publisher/stats`."""

USER_ENV = "PUBLISHER_HUB_USER"
"""Environment variable `main_serve` reads the user name from (default `publisher-demo`)."""


class LocalHub:
    """The local Hub on 127.0.0.1 in a background thread, as a context manager.

    ```python
    with LocalHub(tmp_path / "hub") as hub, hub_client_env(hub.endpoint, token="x"):
        HfApi().create_repo("me/model")
        hub.faults.add("PUT", r"/info/lfs/objects/", "500")
    ```

    Attributes:
        data_dir: where repos and blobs are stored (survives `stop`; a new `LocalHub` over the
            same directory sees the same repos).
        endpoint: `"http://127.0.0.1:<port>"`, what `HF_ENDPOINT` should be. Set once started.
        faults: the `FaultInjector` consulted on every request.
        stats: `HubStats`: LFS bytes received, commits made, requests seen.
        token: the only token accepted, or None for any.
        user: the user name whoami answers.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        user: str = DEFAULT_USER,
        faults: FaultInjector | None = None,
        test_api: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.token = token
        self.user = user
        self.faults = faults if faults is not None else FaultInjector()
        self.stats = HubStats()
        self.test_api = test_api
        self.endpoint = ""
        self._server: uvicorn.Server | None = None
        self._app: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> LocalHub:
        """Bind the port (a free one when `port` is 0), start serving, return once it answers."""
        if self._server is not None:
            raise RuntimeError("this LocalHub is already started")
        app = create_app(
            self.data_dir,
            self.token,
            self.faults,
            user=self.user,
            stats=self.stats,
            test_api=self.test_api,
        )
        self._app = app
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
        # and without it every response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"local-hub-{self.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        deadline = timeout
        while not server.started and thread.is_alive() and deadline > 0:
            threading.Event().wait(0.02)
            deadline -= 0.02
        if not server.started:
            self.stop()
            raise RuntimeError(f"the local Hub did not start on {self.endpoint} within {timeout}s")
        return self

    def stop(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Stop serving and, with `wait`, wait for the thread; idempotent.

        uvicorn notices the stop at its next 0.1 s tick and then sleeps 0.1 s more while
        connections close: `wait=False` (a test's teardown) lets the daemon thread finish that
        on its own. Job processes are killed before this returns either way.
        """
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None or thread is None:
            return
        self._app.state.jobs.shutdown()  # no job process outlives its server
        server.should_exit = True
        if not wait:
            return
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)

    @property
    def jobs(self) -> Any:
        """The server's `LocalJobs` (once started): its jobs, their specs and log lines."""
        return self._app.state.jobs

    def client_env(self, token: str | None = None) -> dict[str, str]:
        """Environment variables for a huggingface_hub client in a subprocess."""
        return client_environment(self.endpoint, token=token or self.token or "local-hub-token")

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def client_environment(
    endpoint: str, *, token: str | None = None, hf_home: Path | None = None
) -> dict[str, str]:
    """The environment variables that point a huggingface_hub client at `endpoint`, over plain
    LFS (no Xet), online, without telemetry."""
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": _no_proxy(os.environ.get("NO_PROXY") or os.environ.get("no_proxy")),
    }
    env["no_proxy"] = env["NO_PROXY"]
    if token is not None:
        env["HF_TOKEN"] = token
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
        env["HF_HUB_CACHE"] = str(Path(hf_home) / "hub")
    return env


def client_constants(endpoint: str, *, hf_home: Path | None = None) -> dict[str, Any]:
    """The `huggingface_hub.constants` attributes, frozen at import, that must change for a
    client in this process to talk to `endpoint` (name → value). `HUGGINGFACE_CO_URL_TEMPLATE`
    matters: `hf_hub_download` builds its URL from it, not from `ENDPOINT`."""
    endpoint = endpoint.rstrip("/")
    patched: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    if hf_home is not None:
        home = str(hf_home)
        patched.update(
            HF_HOME=home,
            HF_HUB_CACHE=os.path.join(home, "hub"),
            HUGGINGFACE_HUB_CACHE=os.path.join(home, "hub"),
            HF_ASSETS_CACHE=os.path.join(home, "assets"),
            HF_XET_CACHE=os.path.join(home, "xet"),
            HF_TOKEN_PATH=os.path.join(home, "token"),
            HF_STORED_TOKENS_PATH=os.path.join(home, "stored_tokens"),
        )
    return patched


@contextlib.contextmanager
def hub_client_env(
    endpoint: str, *, token: str | None = None, hf_home: Path | None = None
) -> Iterator[dict[str, str]]:
    """Point huggingface_hub, in this process and in subprocesses, at `endpoint`.

    Sets the variables of `client_environment` in `os.environ` **and** the matching attributes of
    `huggingface_hub.constants` that were frozen at import (`ENDPOINT`,
    `HUGGINGFACE_CO_URL_TEMPLATE`, `HF_HUB_DISABLE_XET`, `HF_HUB_OFFLINE`, and with `hf_home`
    `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN_PATH`, ...). Everything is restored on exit. Yields the
    environment it set.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    env = client_environment(endpoint, token=token, hf_home=hf_home)
    patched = client_constants(endpoint, hf_home=hf_home)
    old_constants = {name: getattr(constants, name) for name in patched if hasattr(constants, name)}
    old_env = {name: os.environ.get(name) for name in env}
    try:
        os.environ.update(env)
        for name, value in patched.items():
            setattr(constants, name, value)
        _http.close_session()  # a fresh connection pool: no connection kept to an older server
        yield env
    finally:
        for name in patched:
            if name in old_constants:
                setattr(constants, name, old_constants[name])
            else:
                delattr(constants, name)
        for name, old in old_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        _http.close_session()


def serve(
    host: str,
    port: int,
    data_dir: Path,
    *,
    token: str | None = None,
    user: str = DEFAULT_USER,
    test_api: bool = False,
) -> None:
    """Serve the local Hub in the foreground until interrupted (Ctrl-C)."""
    data_dir = Path(data_dir)
    app = create_app(data_dir, token, user=user, test_api=test_api)
    print(f"local Hub on http://{host}:{port}  data: {data_dir}", flush=True)
    print(
        f"clients: export HF_ENDPOINT=http://{host}:{port} HF_HUB_DISABLE_XET=1 HF_TOKEN=<any token>",
        flush=True,
    )
    if test_api:
        print("test API on: POST /_publisher/faults, GET /_publisher/stats", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=2)
    finally:
        app.state.jobs.shutdown()


def main_serve(host: str, port: int, data_dir: Path) -> None:
    """`publisher hub serve`: `serve` with the token from `$PUBLISHER_HUB_TOKEN` (any token when
    unset), the user name from `$PUBLISHER_HUB_USER`, and the test API when
    `$PUBLISHER_HUB_TEST_API=1`. Blocks until Ctrl-C."""
    serve(
        host,
        port,
        data_dir,
        token=os.environ.get(TOKEN_ENV) or None,
        user=os.environ.get(USER_ENV) or DEFAULT_USER,
        test_api=os.environ.get(TEST_API_ENV, "").strip().lower() in ("1", "true", "yes", "on"),
    )


def _no_proxy(existing: str | None) -> str:
    hosts = [h.strip() for h in (existing or "").split(",") if h.strip()]
    for host in ("127.0.0.1", "localhost"):
        if host not in hosts:
            hosts.append(host)
    return ",".join(hosts)
