"""The temporary Prefect API server of one CLI command, which dies with the command.

Without PREFECT_API_URL, Prefect starts its own temporary server (a uvicorn subprocess) and stops it at
interpreter exit; a CLI killed with SIGKILL never gets there and the server is left running. So the
commands that run flows start the server themselves, in `temporary_server()`:

* the listening socket is bound here (127.0.0.1, a free port) and handed to the child, so no port race;
* the child (`python -m flows.server --fd N --parent PID`) runs the same app as Prefect's temporary server
  (`prefect.server.api.server:create_app`, UI and background services off) and checks every
  `WATCH_S` seconds that its parent is still PID; when the parent is gone (even by SIGKILL) it stops
  itself with SIGTERM, and SIGKILL shortly after if that does not end it;
* the command talks to it through PREFECT_API_URL for the duration of the block, then terminates it.

With PREFECT_API_URL set (a `prefect server start`, Prefect Cloud, the test harness) nothing is started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

WATCH_S = 0.5  # how often the server checks that the command that started it is alive
_GRACE_S = 10.0  # after SIGTERM, how long the server may take to stop before it kills itself


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """A Prefect API server for the block, tied to this process; yields its API URL (None when
    PREFECT_API_URL is already set or temporary servers are disabled, and nothing is started)."""
    import httpx
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        # what Prefect's own temporary server sets: no UI, no background services
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no network call (and no error line) from telemetry
    }
    cmd = [sys.executable, "-m", "flows.server", "--fd", str(sock.fileno()), "--parent", str(os.getpid())]
    proc = subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),))
    sock.close()  # the child has its own copy
    try:
        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        with httpx.Client() as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the temporary Prefect server exited with status {proc.returncode} while starting; "
                        "fix: rerun with --verbose, or start one (`prefect server start`) and set "
                        "PREFECT_API_URL"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/health", timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the temporary Prefect server did not answer on {url} within "
                        f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s; fix: raise "
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL"
                    )
                time.sleep(0.1)
        log.info("temporary Prefect server on %s (pid %d; it stops with this command)", url, proc.pid)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_clients()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_prefect_clients(timeout_s: float = 5.0) -> None:
    """Send what Prefect's background workers still hold (run logs, events) while the server is up; after it
    stops they would fail at interpreter exit and print connection errors under the command's own line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        progress = logging.getLogger(worker.__name__)  # its "still processing items" lines while it drains
        level = progress.level
        progress.setLevel(logging.ERROR)
        try:
            with contextlib.suppress(Exception):  # best effort: a worker that cannot flush loses a log line
                worker.drain_all(timeout=timeout_s)
        finally:
            progress.setLevel(level)


def _exit_with_parent(parent: int) -> None:
    """Stop this process once `parent` is no longer its parent (it exited or was killed)."""
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(_GRACE_S)
    os._exit(1)


def _serve(fd: int, parent: int) -> None:
    """Child process: serve the Prefect API on the inherited socket `fd` while `parent` lives."""
    import uvicorn

    if os.getppid() != parent:  # the command died before we got here
        return
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    config = uvicorn.Config(
        "prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The temporary Prefect server of a recsys command.")
    parser.add_argument("--fd", type=int, required=True, help="listening socket inherited from the parent")
    parser.add_argument("--parent", type=int, required=True, help="pid of the command that started it")
    args = parser.parse_args()
    _serve(args.fd, args.parent)
