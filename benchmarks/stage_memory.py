"""Wall time and peak memory of one pipeline stage run alone, in a fresh child process.

    .venv/bin/python benchmarks/stage_memory.py --out /tmp/x/large/out --date 2024-03-29 --stage ranker
    .venv/bin/python benchmarks/stage_memory.py --out /tmp/x/large/out --date 2024-03-29 --stage retriever

The stage reads (and replaces) the committed partitions of `--out`, so point it at a copy of a nightly run's
outputs: `ranker` (the pointwise ranker stage) needs frames and embeddings of D; `retriever` needs frames and
embeddings of D (and the input events under the config's data.dir, for purchase exclusion). The config is
the resolved one stored beside frames/dt=D (`_config.json`), so the stage runs with the settings of the
nightly run that built its inputs; `--set section.key=value` overrides single values, and `--block-users N`
sets the retriever's users per search block (retriever.candidate_block_users). The funnel stage has its
own benchmark, benchmarks/funnel_stage.py.

The child imports the code of the checkout this script lives in (not an installed copy), runs the stage
once and prints a JSON line with the stage's summary; the parent prints wall time of the stage call and
the child's peak RSS (ru_maxrss of the child process, imports and the loaded model included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ranker", "retriever")


def _config(out: Path, dt: str, sets: list[str]):  # noqa: ANN202
    """(D, the Config stored beside frames/dt=D with `sets` applied, its hash)."""
    from datetime import date

    from pipelines import io
    from pipelines.config import Config, config_hash, parse_override

    d = date.fromisoformat(dt)
    tree = json.loads(io.committed_path(out, "frames", d, io.CONFIG_FILE).read_text())
    for text in sets:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    cfg = Config.model_validate(tree)
    return d, cfg, config_hash(cfg)


def child(out: Path, dt: str, stage: str, device: str, sets: list[str], block_users: int | None) -> None:
    sys.path.insert(0, str(ROOT))
    from pipelines import io
    from pipelines.config import config_to_dict

    d, cfg, chash = _config(out, dt, sets)
    run = io.RunInfo.new(config_to_dict(cfg), chash, run_id="stagemem")
    blocks = {} if block_users is None else {"block_users": block_users}
    t0 = time.perf_counter()
    if stage == "ranker":
        from pipelines.ranking import train_ranker_stage

        if blocks:
            raise SystemExit("--block-users applies to the retriever stage only")
        summary = train_ranker_stage(out, d, cfg.ranker, cfg.runtime.seed, device, run)
        summary.pop("metrics", None)
    else:
        from pipelines.retriever import train_retriever_stage

        summary = train_retriever_stage(
            out, d, cfg.retriever, cfg.index, cfg.runtime.seed, device, run, **blocks
        )
        summary.pop("metrics", None)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"stage": stage, "stage_s": wall, "child_peak_rss_mb": peak, "summary": summary}, default=str
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output root holding the stage's inputs")
    parser.add_argument("--date", required=True, help="run date D, YYYY-MM-DD")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument(
        "--block-users", type=int, default=None, help="users per block (default: the stage's own constant)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.out, args.date, args.stage, args.device, args.set, args.block_users)
        return
    cmd = [sys.executable, __file__, "--child", "--out", str(args.out), "--date", args.date,
           "--stage", args.stage, "--device", args.device, *(f"--set={s}" for s in args.set),
           *(["--block-users", str(args.block_users)] if args.block_users else [])]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{args.stage}: the stage failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.update({"process_wall_s": wall, "peak_rss_mb": peak_mb, "out": str(args.out), "date": args.date})
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.write(
        f"{args.stage} on {args.out} D={args.date}: stage {result['stage_s']:.1f} s "
        f"(process {wall:.1f} s), peak RSS {peak_mb / 1024:.2f} GB\n"
    )


if __name__ == "__main__":
    main()
