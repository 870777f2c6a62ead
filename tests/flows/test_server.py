"""The temporary Prefect server of a command dies with the command, also when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the server process through /proc"),
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def test_temporary_server_dies_with_a_killed_command(tmp_path):
    code = textwrap.dedent(
        """
        import os, time
        from pathlib import Path
        from flows.server import temporary_server
        with temporary_server() as url:
            import httpx
            assert httpx.get(url + "/health").status_code == 200
            def parent_of(stat):
                try:
                    return stat.read_text().rsplit(")", 1)[-1].split()[1]
                except OSError:  # a process that ended meanwhile
                    return None
            kids = [p.parent.name for p in Path("/proc").glob("[0-9]*/stat") if parent_of(p) == str(os.getpid())]
            print(kids[0], flush=True)
            time.sleep(600)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # no server configured
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # its own database
    cli = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        server_pid = int(cli.stdout.readline())  # the line comes once the server answered
        assert _alive(server_pid)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 15
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the temporary server outlived the command"
    finally:
        if cli.poll() is None:
            cli.kill()
