"""Benchmark: the ranker's fusion strategies (models/fusion.py, `ranker.fusion`) on the synthetic split.

The split of benchmarks/ranker_compare.py (synthetic preset -> frames of D = the second-to-last day, text
and image embeddings; built once under --work and reused), one DCN-Mix per strategy trained through
pipelines.ranking.fit (the nightly stage's code path: early stopping on valid AUC) and evaluated on
eval_ranker (D+1), plus a reference row without text and image. Reported per row: test AUC, logloss, GAUC,
valid AUC, parameters, epochs, samples/s, and the wall time of training + evaluation.

    .venv/bin/python benchmarks/fusion_compare.py [--work /tmp/ranker_bench] [--epochs 2] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from ranker_compare import run_one, synthetic_split  # benchmarks/ is on sys.path when run as a script

from models.config import RankerConfig
from models.device import resolve_device
from pipelines.ranking import prepare_data

log = logging.getLogger("fusion_compare")
KINDS = ("concat", "late", "attention", "cross_attention")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ranker_bench"))
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--window", type=int, default=7, help="train_window_days of the synthetic split")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--fusions", default=",".join(KINDS), help="comma-separated strategies")
    ap.add_argument("--no-reference", action="store_true", help="skip the row without text and image")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and data order")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start = time.perf_counter()
    out, dt = synthetic_split(args.work, args.preset, args.window)
    data = prepare_data(out, dt)
    rows_of = {k: pl.scan_parquet(p).select(pl.len()).collect().item() for k, p in
               (("train", data.train), ("valid", data.valid), ("eval", data.eval))}  # fmt: skip
    print(f"\n## rows {rows_of}")
    print(
        f"\n## synthetic {args.preset}: D={dt}, text {data.text_dim}-d, image {data.image_dim}-d, {device}\n"
    )
    base = RankerConfig(
        epochs=args.epochs, patience=1, batch_size=args.batch_size, lr=args.lr, amp=device.type == "cuda"
    )
    runs = [(kind, kind, data) for kind in args.fusions.split(",")]
    if not args.no_reference:  # what the ids alone reach: the room the modalities have on this data
        runs.append(("none (no text/image)", "concat", prepare_data(out, dt, item_content=False)))
    rows: list[dict[str, Any]] = []
    for name, kind, split in runs:
        t0 = time.perf_counter()
        row = {"fusion": name, **run_one(base.model_copy(update={"fusion": kind}), split, args.seed, device)}
        row["wall_s"] = time.perf_counter() - t0
        log.info("%s", row)
        rows.append(row)
    print(
        "| fusion | test AUC | test logloss | test GAUC | valid AUC | params | epochs | samples/s | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['fusion']} | {r['auc']:.4f} | {r['logloss']:.4f} | {r['gauc']:.4f} | {r['valid_auc']:.4f} | "
            f"{r['parameters']:,} | {r['epochs']} | {r['samples_per_s']:,.0f} | {r['wall_s']:.0f} |"
        )
    print(f"\nwall time {time.perf_counter() - start:.0f} s (data build included when not cached)")
    if args.json is not None:
        report = {"dt": dt.isoformat(), "split_rows": rows_of, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
