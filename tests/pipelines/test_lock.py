"""One run per (output folder, date): the lock file, stale locks, waiting, and two real processes racing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from pipelines import io
from pipelines.lock import RunLockedError, held_by, read_holder, run_lock

D = date(2024, 3, 9)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out: Path, **fields) -> Path:
    path = io.lock_path(out, D)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "owner": "someone@elsewhere",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": "2024-03-10T02:00:00+00:00",
        "proc_start": None,
        "token": "t0",
    }
    path.write_text(json.dumps({**body, **fields}))
    return path


def test_lock_file_names_its_holder_and_is_removed_at_the_end(tmp_path: Path):
    with run_lock(tmp_path, D) as path:
        assert path == tmp_path / ".locks" / "dt=2024-03-09.lock"
        holder = read_holder(path)
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        assert holder.owner.endswith("@" + socket.gethostname()) and holder.started
        assert held_by(tmp_path, D) == holder
        with pytest.raises(RunLockedError) as err:  # a second run of the same date and folder
            with run_lock(tmp_path, D):
                pass
        line = str(err.value)
        assert "\n" not in line and str(path) in line and f"pid {os.getpid()}" in line
        assert "fix: wait for it to end, pass --wait" in line
        with run_lock(tmp_path, date(2024, 3, 10)):  # another date is another lock
            pass
    assert not path.exists() and held_by(tmp_path, D) is None


def test_lock_is_released_when_the_run_fails(tmp_path: Path):
    with pytest.raises(ValueError):
        with run_lock(tmp_path, D):
            raise ValueError("stage failed")
    assert not io.lock_path(tmp_path, D).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog):
    path = _write_lock(tmp_path, pid=_dead_pid())  # what a run killed with SIGKILL leaves behind
    assert held_by(tmp_path, D) is None
    with caplog.at_level(logging.WARNING, logger="pipelines.lock"):
        with run_lock(tmp_path, D):
            assert read_holder(path).pid == os.getpid()
    assert "took over the stale lock of someone@elsewhere" in caplog.text


def test_reused_pid_is_stale_and_another_host_is_not(tmp_path: Path):
    # our own pid, alive, but the lock says the process started at another time: the pid was reused
    _write_lock(tmp_path, proc_start="1")
    if Path(f"/proc/{os.getpid()}/stat").exists():
        assert held_by(tmp_path, D) is None
    # a live-looking lock of another host cannot be checked from here: it is held
    _write_lock(tmp_path, host="another-host", pid=_dead_pid())
    with pytest.raises(RunLockedError, match="someone@elsewhere"):
        with run_lock(tmp_path, D):
            pass


def test_wait_starts_when_the_holder_ends(tmp_path: Path):
    got: list[float] = []
    release = threading.Event()

    def holder() -> None:
        with run_lock(tmp_path, D):
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    while not io.lock_path(tmp_path, D).exists():
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    start = time.monotonic()
    with run_lock(tmp_path, D, wait=True, poll_s=0.05):
        got.append(time.monotonic() - start)
    t.join()
    assert got and got[0] >= 0.25  # it waited for the holder, then ran


def test_only_our_own_lock_is_removed(tmp_path: Path):
    with run_lock(tmp_path, D) as path:
        path.unlink()  # someone deleted our lock by hand and another run took it
        _write_lock(tmp_path, token="theirs")
    assert read_holder(path).token == "theirs"  # left alone


def test_two_processes_at_once_one_runs_and_one_refuses(tmp_path: Path):
    """Two real processes try the lock of the same date at the same moment: exactly one gets it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from datetime import date
        from pipelines.lock import RunLockedError, run_lock
        time.sleep(max(0.0, {time.time() + 1.0} - time.time()))  # start together
        try:
            with run_lock({str(tmp_path)!r}, date(2024, 3, 9)):
                print("ran", flush=True)
                time.sleep(1.0)
        except RunLockedError as err:
            print("refused", str(err), flush=True)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outputs[0] == "ran", outputs
    assert outputs[1].startswith("refused") and "another run of 2024-03-09" in outputs[1], outputs
    assert not io.lock_path(tmp_path, D).exists()
