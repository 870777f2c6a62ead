"""The one device resolver of the pipeline."""

from __future__ import annotations

import pytest
import torch

from models.device import resolve_device


def test_auto_cpu_and_bad_names() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="fix: use auto, cpu or cuda"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="torch sees no GPU; fix: use device auto or cpu"):
        resolve_device("cuda:0")
