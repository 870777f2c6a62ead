"""One run per (output folder, date): a lock file that names its holder.

    <out>/.locks/dt=YYYY-MM-DD.lock    (path from `pipelines.io.lock_path`)
    {"owner": "alice@box", "host": "box", "pid": 4242, "started": "2024-03-10T02:00:03+00:00",
     "proc_start": "81234567", "token": "9f1c..."}

The file is created with O_CREAT | O_EXCL, so of two runs that try at once exactly one gets it; it is
removed when the run ends (only by the run whose token it holds). A run killed with SIGKILL leaves it
behind: a lock whose process is gone (same host, pid not alive, or alive but started at another time, i.e.
a reused pid) is stale and the next run takes it over with a warning. A lock held by a live process, or by
a process on another host (which cannot be checked from here), makes the next run raise `RunLockedError`,
or wait for it with `wait=True`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from pipelines import io

log = logging.getLogger(__name__)

_FRESH_S = 60.0  # an unreadable lock (being written) or takeover guard younger than this is in use


class RunLockedError(RuntimeError):
    """Another live run holds the lock of this (output folder, date); the message names it and the fix."""


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the run that holds it."""

    owner: str
    host: str
    pid: int
    started: str
    proc_start: str | None
    token: str

    def describe(self) -> str:
        return f"{self.owner}, pid {self.pid}, since {self.started}"


def _proc_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return fields[19] if len(fields) > 19 else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return not _zombie(pid)


def is_stale(holder: Holder) -> bool:
    """True when the holder's process is known to be gone: same host and its pid is dead or was reused."""
    if holder.host != socket.gethostname():
        return False
    if not _alive(holder.pid):
        return True
    now = _proc_start(holder.pid)
    return holder.proc_start is not None and now is not None and now != holder.proc_start


def read_holder(path: Path) -> Holder | None:
    """The holder named by a lock file; None when it is absent or not (yet) a complete lock file."""
    try:
        raw = json.loads(Path(path).read_text())
        return Holder(
            owner=str(raw["owner"]),
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            started=str(raw["started"]),
            proc_start=raw.get("proc_start"),
            token=str(raw["token"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def held_by(out: Path, dt: date) -> Holder | None:
    """The live holder of the lock of (out, dt), or None when it is free or stale (nothing is changed)."""
    holder = read_holder(io.lock_path(out, dt))
    return None if holder is None or is_stale(holder) else holder


def probe(out: Path) -> None:
    """Raise the OSError a run would meet when taking a lock in `out` (read-only, not a folder, no
    permission, disk full), by creating and removing an empty file where the locks live."""
    folder = io.lock_path(out, date(1970, 1, 1)).parent
    folder.mkdir(parents=True, exist_ok=True)
    test = folder / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.close(os.open(test, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    test.unlink()


def locked_message(path: Path, dt: date, holder: Holder) -> str:
    return (
        f"{path}: another run of {dt} is writing to this output folder ({holder.describe()}); "
        "fix: wait for it to end, pass --wait to start when it does, or delete the lock file if that run "
        "is gone"
    )


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _try_create(path: Path, body: dict) -> bool:
    """Create the lock file with O_CREAT | O_EXCL; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _take_over(path: Path, stale: Holder) -> None:
    """Remove a stale lock, unless another run took it over first (guarded by an O_EXCL marker)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        if _age_s(guard) > _FRESH_S:  # left by a run that died during a takeover
            guard.unlink(missing_ok=True)
        return
    try:
        again = read_holder(path)
        if again is not None and again.token == stale.token:
            path.unlink(missing_ok=True)
            log.warning("%s: took over the stale lock of %s (that process is gone)", path, stale.describe())
    finally:
        guard.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: Path, dt: date, *, wait: bool = False, poll_s: float = 2.0) -> Iterator[Path]:
    """Hold the lock of (out, dt) for the block; returns its path.

    Raises RunLockedError when a live run holds it (with `wait`, polls every `poll_s` seconds until it
    is free instead). A stale lock is taken over. OSError (read-only or missing output folder) propagates.
    """
    path = io.lock_path(out, dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        user = str(os.getuid())
    body = {
        "owner": f"{user}@{host}",
        "host": host,
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "proc_start": _proc_start(os.getpid()),
        "token": uuid.uuid4().hex,
    }
    waiting = False
    while not _try_create(path, body):
        holder = read_holder(path)
        if holder is None:  # being written right now, or a leftover that cannot be read
            if _age_s(path) > _FRESH_S:
                path.unlink(missing_ok=True)
                log.warning("%s: removed an unreadable lock file", path)
            else:
                time.sleep(0.05)
            continue
        if is_stale(holder):
            _take_over(path, holder)
            continue
        if not wait:
            raise RunLockedError(locked_message(path, dt, holder))
        if not waiting:
            log.warning("%s: waiting for the run of %s (%s) to end", path, dt, holder.describe())
            waiting = True
        time.sleep(poll_s)
    try:
        yield path
    finally:
        mine = read_holder(path)
        if mine is not None and mine.token == body["token"]:
            path.unlink(missing_ok=True)
