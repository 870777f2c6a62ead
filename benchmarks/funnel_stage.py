"""The funnel stage alone on the outputs of an earlier nightly run: wall time per phase and peak memory.

    .venv/bin/python benchmarks/funnel_stage.py --data DATA --out OUT --date D [--funnel.block_users=2000]

DATA and OUT are a data folder and an output folder where the nightly flow already ran for D (for example
`<work>/large/{data,out}` of `benchmarks/nightly.py --large --work <work>`): the stage reads the frames and
the retriever of D from OUT and commits funnel/, candidates/ and scores/ of D there again (use a copy of
OUT to keep the first run's files). Prints the phases' seconds (funnel/dt=D/metrics.json), the published
order, NDCG@10 of the published, merged and popularity lists, and the process's peak RSS (imports
included). Extra `--section.key=value` arguments are config overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from pipelines import io
    from pipelines.config import load_config
    from pipelines.funnel import funnel_stage

    cfg = load_config(None, overrides)
    run = io.RunInfo.new({}, "benchmark", run_id="funnel-stage-benchmark")
    start = time.perf_counter()
    summary = funnel_stage(
        args.data, args.out, args.date, cfg.funnel, cfg.ranker, list(cfg.sampling.positive_events),
        cfg.data.train_window_days + cfg.data.history_lookback_days, cfg.retriever.exclude_purchased,
        cfg.runtime.seed, "cpu", run,
    )  # fmt: skip
    wall = time.perf_counter() - start
    m = summary["metrics"]
    ndcg = {
        name: (v["ndcg@10"] if isinstance(v, dict) else v)
        for name, v in m["eval"].items()
        if name in ("published", "merged", "popularity")
    }
    print(json.dumps({"order": m["order"], "seconds": m["seconds"], "ndcg@10": ndcg, "users": m["users"]}))
    print(f"wall {wall:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
