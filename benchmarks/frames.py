"""Benchmark of the training-frames stage alone: wall time and peak RSS of `build_frames` in a child process.

    .venv/bin/python benchmarks/frames.py --data /tmp/s2frames/medium --date 2024-01-27 --out /tmp/f-out
    .venv/bin/python benchmarks/frames.py --data /tmp/nb_large/large/data --date 2024-03-29 --out /tmp/f-out \
        --n-blocks 8

The child process imports the pipeline, runs `build_frames` once with the default config (W=14, L=30,
seed 0) and prints one JSON line; the parent adds the child's peak RSS (`ru_maxrss` of the finished
child, imports included) and prints the result. `--n-blocks` passes an explicit number of user blocks
(default: chosen by `build_frames` from the number of events). `--baseline-rss` also reports the peak RSS
of a child that only imports the modules, so the stage's own share can be read off.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(data: Path, dt: date, out: Path, n_blocks: int | None, imports_only: bool) -> None:
    """Run build_frames once (or only import it) and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    from pipelines.config import Config
    from pipelines.frames import build_frames
    from pipelines.io import RunInfo

    if imports_only:
        print(json.dumps({"imports_only": True}))
        return
    cfg = Config()
    run = RunInfo.new(cfg.model_dump(mode="json"), "benchmark", run_id="bench-frames")
    kwargs = {} if n_blocks is None else {"n_blocks": n_blocks}
    t0 = time.perf_counter()
    manifest = build_frames(
        data, out, dt, cfg.data, cfg.columns, cfg.features, cfg.sampling, cfg.runtime.seed, run, **kwargs
    )
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "rows": manifest["rows"],
                "blocks": manifest.get("blocks"),
                "events_read": manifest.get("events_read"),
            }
        )
    )


def _run_child(args: list[str]) -> tuple[dict, float]:
    """(the child's JSON line, its peak RSS in GB)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"frames benchmark child failed (rc={proc.returncode})")
    # ru_maxrss of RUSAGE_CHILDREN is the largest peak of any child waited for so far (KiB on Linux)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak_kb / 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="input data root (events/, users, items)")
    p.add_argument("--date", type=date.fromisoformat, required=True, help="run date D, YYYY-MM-DD")
    p.add_argument("--out", type=Path, required=True, help="output root (frames/dt=D/ is replaced)")
    p.add_argument("--n-blocks", type=int, default=None, help="user blocks (default: automatic)")
    p.add_argument("--baseline-rss", action="store_true", help="also measure an imports-only child")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.data, a.date, a.out, a.n_blocks, a.imports_only)
        return
    common = ["--data", str(a.data), "--date", a.date.isoformat(), "--out", str(a.out)]
    result: dict = {"data": str(a.data), "date": a.date.isoformat()}
    if a.baseline_rss:
        # measured first: ru_maxrss of RUSAGE_CHILDREN is a running maximum over finished children
        _, base_gb = _run_child([*common, "--imports-only"])
        result["imports_only_peak_rss_gb"] = round(base_gb, 3)
    extra = [] if a.n_blocks is None else ["--n-blocks", str(a.n_blocks)]
    line, peak_gb = _run_child([*common, *extra])
    result.update(line)
    result["peak_rss_gb"] = round(peak_gb, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
