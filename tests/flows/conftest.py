"""One Prefect test harness (a temporary API server + database) for every flow test of the session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_flow_data(tmp_path_factory):
    """A tiny synthetic data set (300 users, 200 items, 5 days) shared by the operations tests."""
    from dataclasses import replace

    from pipelines.datasets.synthetic import PRESETS, generate

    data = tmp_path_factory.mktemp("ops") / "data"
    generate(data, replace(PRESETS["small"], users=300, items=200, days=5))
    return data


# tiny model settings: the flow tests check orchestration, not model quality
TINY_MODELS = [
    "--data.train_window_days=2",
    "--runtime.device=cpu",
    "--runtime.task_retry_delay_s=0",
    "--features.id_buckets={user_id: 2000, item_id: 1000}",
    "--retriever.epochs=1",
    "--retriever.dim=16",
    "--retriever.field_dim=8",
    "--retriever.hidden=[32]",
    "--retriever.top_k=20",
    "--ranker.epochs=1",
    "--ranker.field_dim=8",
    "--ranker.experts=2",
    "--ranker.rank=8",
    "--ranker.mlp=[32]",
    # the cross-modal image encoder on the ~190 items with a photo and a title (auto needs crossmodal.min_items)
    "--crossmodal.min_items=50",
    "--crossmodal.epochs=1",
    "--crossmodal.warm_epochs=1",
    "--crossmodal.width=4",
    "--crossmodal.dim=8",
    "--crossmodal.image_size=16",
]


@pytest.fixture(scope="session")
def tiny_overrides():
    """Overrides of a quick flow run: `tiny_overrides(data, out)` -> list of --section.key=value."""

    def make(data, out) -> list[str]:
        return [f"--data.dir={data}", f"--data.out={out}", *TINY_MODELS]

    return make


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder that cannot be written to: mode 0555, or for root (who ignores modes) the immutable
    attribute (chattr +i, ext4/xfs/btrfs); skips where neither is possible."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no read-only folder possible")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], capture_output=True)
