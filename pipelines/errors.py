"""Failures as a person reads them: which ones a retry can cure, and one line per problem with its fix.

Retries are for errors that can go away by themselves (a network file system hiccup, a timeout). A file
that is missing, a folder without permission, a read-only or full disk stay that way: the task fails at
once and the message says what to do.
"""

from __future__ import annotations

import errno
import os

# errno -> (what happened, the fix); these never cure themselves, so a task that raised them is not retried
PERMANENT_ERRNOS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "give this user access to it, or pass another --out / --data"),
    errno.EPERM: ("operation not permitted", "give this user access to it, or pass another --out / --data"),
    errno.ENOENT: ("no such file or folder", "create it or correct the path"),
    errno.EISDIR: ("is a folder where a file is expected", "remove or rename that folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "correct the path (e.g. --out, --data)"),
    errno.ENOSPC: ("no space left on the device", "free disk space, or pass --out on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota, or pass --out on another disk"),
    errno.EROFS: ("read-only file system", "pass --out on a writable file system, or remount it read-write"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "fix the symbolic link loop in the path"),
}


def _errno_of(err: OSError) -> int | None:
    """The errno of an OSError; pyarrow and torch sometimes leave it unset and only say it in the text."""
    if err.errno in PERMANENT_ERRNOS:
        return err.errno
    text = str(err)
    for code in PERMANENT_ERRNOS:
        if os.strerror(code) in text:
            return code
    return err.errno


def is_transient(err: BaseException) -> bool:
    """True when retrying might help: an OSError that is not one of `PERMANENT_ERRNOS`.

    >>> is_transient(TimeoutError("read timed out")), is_transient(PermissionError(13, "Permission denied"))
    (True, False)
    >>> is_transient(OSError(28, "No space left on device")), is_transient(ValueError("bad column"))
    (False, False)
    """
    return isinstance(err, OSError) and _errno_of(err) not in PERMANENT_ERRNOS


def os_error_line(err: OSError) -> str:
    """One line for an OSError: the path, what happened and the fix.

    >>> os_error_line(OSError(30, "Read-only file system", "/mnt/out/.locks"))
    'error: /mnt/out/.locks: read-only file system; fix: pass --out on a writable file system, or remount it read-write'
    """
    code = _errno_of(err)
    where = err.filename if err.filename is not None else None
    if code in PERMANENT_ERRNOS:
        what, fix = PERMANENT_ERRNOS[code]
    else:
        what = err.strerror or str(err) or type(err).__name__
        fix = "retry; if it persists, check the disk or network file system"
    if where is None:
        return f"error: {what} ({_first_line(str(err))}); fix: {fix}"
    return f"error: {where}: {what}; fix: {fix}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def failure_lines(err: BaseException) -> list[str]:
    """The lines a person sees for a failure, each starting with `error: ` (or `warning: `).

    A message that names its fix (the project's own errors) is kept whole when every line names one
    (config, validation), else its problem lines or its first line are kept; an OSError is explained by
    `os_error_line`; anything else is an internal error: its type, first line, and how to get the traceback.

    >>> failure_lines(ValueError("items.parquet: column price: 2 NaN; fix: drop them"))
    ['error: items.parquet: column price: 2 NaN; fix: drop them']
    >>> failure_lines(KeyError("user_id"))
    ["error: internal error KeyError: 'user_id'; fix: rerun with --verbose and report the traceback"]
    """
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "fix:" in text and lines:
        if all("fix:" in line for line in lines):  # one problem per line (config, validation)
            return [line if line.startswith(("error: ", "warning: ")) else f"error: {line}" for line in lines]
        problems = [line for line in lines if line.startswith(("error: ", "warning: "))]
        if problems:  # a summary line followed by problem lines: the problem lines
            return problems
        first = lines[0] if lines[0].startswith("error: ") else f"error: {lines[0]}"
        if "fix:" not in first:
            first += "; fix: rerun with --verbose for the whole message"
        return [first]
    if isinstance(err, OSError):
        return [os_error_line(err)]
    what = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return [f"error: internal error {what}; fix: rerun with --verbose and report the traceback"]
