"""Which failures are retried, and the one line a person reads for each."""

from __future__ import annotations

import errno

import pytest

from pipelines.config import ConfigError
from pipelines.errors import failure_lines, is_transient, os_error_line

PERMANENT = [
    PermissionError(errno.EACCES, "Permission denied", "/out/x"),
    PermissionError(errno.EPERM, "Operation not permitted", "/out/x"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/users.parquet"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "/out/x"),
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "/out/x"),
    OSError(errno.ENOSPC, "No space left on device", "/out/x"),
    OSError(errno.EROFS, "Read-only file system", "/out/x"),
    OSError(errno.EDQUOT, "Disk quota exceeded", "/out/x"),
    OSError("IOError: [Errno 28] No space left on device"),  # pyarrow: no errno, only the text
]


@pytest.mark.parametrize("err", PERMANENT, ids=lambda e: type(e).__name__ + str(e.errno))
def test_permanent_io_errors_are_not_retried_and_name_a_fix(err: OSError):
    assert not is_transient(err)
    (line,) = failure_lines(err)
    assert line.startswith("error: ") and "; fix: " in line and "\n" not in line
    if err.filename:
        assert line.startswith(f"error: {err.filename}: ")


@pytest.mark.parametrize(
    "err", [TimeoutError("timed out"), ConnectionResetError(104, "reset"), OSError(errno.EIO, "I/O error")]
)
def test_transient_io_errors_are_retried(err: OSError):
    assert is_transient(err)
    assert failure_lines(err)[0].endswith("fix: retry; if it persists, check the disk or network file system")


def test_not_io_errors_are_never_retried():
    assert not is_transient(ValueError("x")) and not is_transient(KeyError("x"))


def test_failure_lines_keep_problem_lines_and_drop_the_rest():
    # a validation failure: a summary line, then one line per problem
    err = ValueError("2 errors in the inputs at d:\nerror: a: column x: bad; fix: f1\nerror: b: bad; fix: f2")
    assert failure_lines(err) == ["error: a: column x: bad; fix: f1", "error: b: bad; fix: f2"]
    # config errors: one per line, each given the prefix
    err = ConfigError("config: a.b: bad; fix: remove it\nconfig: a.c: bad; fix: correct the value")
    assert failure_lines(err) == [
        "error: config: a.b: bad; fix: remove it",
        "error: config: a.c: bad; fix: correct the value",
    ]
    # a long message (e.g. a subprocess's stderr after the first line): the first line only
    err = RuntimeError("torchrun failed (1); fix: see its output\nTraceback ...\n  File x\nBoom")
    assert failure_lines(err) == ["error: torchrun failed (1); fix: see its output"]
    # no doubled prefix
    assert failure_lines(ValueError("error: x; fix: y")) == ["error: x; fix: y"]


def test_os_error_without_a_path():
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == (
        "error: no space left on the device ([Errno 28] No space left on device); "
        "fix: free disk space, or pass --out on another disk"
    )
