"""Device resolution: the one place a config value ("auto", "cpu", "cuda", "cuda:1") becomes a torch device;
and `cpu_threads`, torch's CPU thread count for one block of work."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when torch sees a GPU, else cpu; "cpu" / "cuda[:n]" as given.

    Raises ValueError for an unknown name and for cuda on a machine where torch sees no GPU (a run would
    otherwise fail later, far from the setting that caused it).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a device; fix: use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but torch sees no GPU; fix: use device auto or cpu")
    return dev


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[int]:
    """Run the block with torch's intra-op CPU threads set to `n` (0: half the cores, at least 1), then
    restore the previous count; yields the count used.

    For work that runs beside other work in the same process (the embedding stage's encoder training runs
    while the frames stage's polars threads run): torch's OpenMP threads spin while they wait, so on an
    oversubscribed box a training with as many threads as cores can take several times longer than with
    fewer.

    >>> with cpu_threads(1) as n:
    ...     (n, torch.get_num_threads())
    (1, 1)
    """
    if n < 0:
        raise ValueError(f"cpu_threads: n={n}; fix: pass 0 (half the cores) or a positive count")
    before = torch.get_num_threads()
    used = n or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(used)
    try:
        yield used
    finally:
        torch.set_num_threads(before)
