"""The ranker stage under torchrun (ranker.ddp=true): `python -m flows.ddp_ranker JOB.json` on every rank.

The nightly flow's train-ranker task writes JOB.json (out, date, seed, device, the ranker config and the
run info) and starts `torchrun --standalone --nproc_per_node=N -m flows.ddp_ranker JOB.json`; each rank runs
`pipelines.ranking.train_ranker_stage`, whose training loop joins the process group and trains
data-parallel. Only rank 0 commits `ranker/dt=D` to `<out>`: the other ranks run the same stage against a
private overlay of `<out>` (links to every dataset, plus their own `ranker/` holding links to the committed
earlier days for warm start), so they never race rank 0 for the partition, and the overlay is deleted at the
end. Rank 0 writes its summary to JOB.json's `summary_path`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

from models.config import RankerConfig
from pipelines import io
from pipelines.ranking import train_ranker_stage

RANKER = "ranker"


def _overlay(out: Path) -> Path:
    """A folder that reads like `out` but whose ranker/ (and staging) are private to this process."""
    view = Path(tempfile.mkdtemp(prefix="recsys-ddp-rank-"))
    for entry in out.iterdir():
        if entry.name not in (RANKER, ".staging"):
            (view / entry.name).symlink_to(entry.resolve())
    (view / RANKER).mkdir()
    for d in io.committed_dates(out, RANKER):
        part = io.partition_dir(out, RANKER, d)
        (view / RANKER / part.name).symlink_to(part.resolve())
    return view


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out, dt = Path(job["out"]), date.fromisoformat(job["date"])
    cfg = RankerConfig.model_validate(job["ranker"])
    run = io.RunInfo(**job["run"])
    rank = int(os.environ.get("RANK", "0"))
    target = out if rank == 0 else _overlay(out)
    try:
        summary = train_ranker_stage(target, dt, cfg, job["seed"], job["device"], run)
    finally:
        if rank != 0:
            shutil.rmtree(target, ignore_errors=True)
    if rank == 0:
        io.write_json_atomic(Path(job["summary_path"]), summary)


if __name__ == "__main__":
    main(sys.argv[1])
