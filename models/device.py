"""Device resolution: the one place a config value ("auto", "cpu", "cuda", "cuda:1") becomes a torch device."""

from __future__ import annotations

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
