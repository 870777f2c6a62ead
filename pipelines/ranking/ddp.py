"""The ranker stage data-parallel under torchrun (ranker.ddp=true): the launcher and each rank's entry point.

`ddp_ranker_stage` writes a job file (out, date, seed, device, the ranker config and the run info) and runs
`torchrun --standalone --nproc_per_node=N -m pipelines.ranking.ddp JOB.json`. Every rank runs
`train_and_evaluate` (it reads `<out>` and writes nothing; the training loop joins the process group and
trains data-parallel); rank 0 alone commits `ranker/dt=D` (`commit_ranker`) and writes the summary the
launcher returns. N is $RECSYS_DDP_NPROC, else the number of CUDA devices, else 2 (CPU processes, gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import torch

from models.config import RankerConfig
from pipelines import io
from pipelines.ranking.train import commit_ranker, train_and_evaluate

DDP_NPROC_ENV = "RECSYS_DDP_NPROC"  # processes of a DDP ranker run (default: CUDA devices, else 2)


def ddp_ranker_stage(
    out: Path, dt: date, cfg: RankerConfig, seed: int, device: str, run: io.RunInfo
) -> dict[str, Any]:
    """Train the ranker of D on N processes; returns rank 0's summary. A failed rank raises RuntimeError
    with torchrun's output."""
    nproc = int(os.environ.get(DDP_NPROC_ENV) or torch.cuda.device_count() or 2)
    with tempfile.TemporaryDirectory(prefix="recsys-ddp-") as tmp:
        job, summary = Path(tmp) / "job.json", Path(tmp) / "summary.json"
        job.write_text(
            json.dumps(
                {
                    "out": str(out),
                    "date": dt.isoformat(),
                    "seed": seed,
                    "device": device,
                    "ranker": cfg.model_dump(mode="json"),
                    "run": {
                        "run_id": run.run_id,
                        "config_hash": run.config_hash,
                        "code_revision": run.code_revision,
                        "config": run.config,
                    },
                    "summary_path": str(summary),
                },
                default=str,
            )
        )
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pipelines.ranking.ddp", str(job)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun ranker training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(summary.read_text())


def main(job_path: str) -> None:
    """One rank's run of the job file `ddp_ranker_stage` wrote."""
    job = json.loads(Path(job_path).read_text())
    out, dt = Path(job["out"]), date.fromisoformat(job["date"])
    cfg = RankerConfig.model_validate(job["ranker"])
    run = io.RunInfo(**job["run"])
    trained = train_and_evaluate(out, dt, cfg, job["seed"], job["device"])
    if int(os.environ.get("RANK", "0")) == 0:
        io.write_json_atomic(Path(job["summary_path"]), commit_ranker(out, dt, trained, run))


if __name__ == "__main__":
    main(sys.argv[1])
