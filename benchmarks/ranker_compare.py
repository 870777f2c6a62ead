"""Benchmark: LR / FM / DCN-V2 / DCN-Mix rankers on one split, plus DCN-Mix ablations, in one run.

Data, built once under --work and reused by later runs:

* synthetic `medium` preset (pipelines.datasets.synthetic; planted age_bucket x price_bucket and gender x category_l1
  crosses) -> frames for D = the second-to-last day (train: the W-1 days before D, valid: D, test: D+1 =
  eval_ranker) -> text (packaged MiniLM) and image (colour/edge descriptor) embeddings of the catalogue;
* Open Bandit Dataset sample (pipelines.datasets.import_obd) -> frames for D = 2019-11-29 (train 11-25..28,
  valid 11-29, test 11-30). Only the positives and the *real* negatives (shown, not clicked) are kept, so
  labels are real clicks; the metrics are averaged over --seeds seeds (mean and std).

Every model trains through pipelines.ranking.fit (the nightly stage's code path): early stopping on valid
AUC, test metrics on eval_ranker. Reported: test AUC, logloss, GAUC, parameters, training samples/s.

    .venv/bin/python benchmarks/ranker_compare.py [--work /tmp/ranker_bench] [--epochs 2] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from features.config import EmbeddingsConfig, FeaturesConfig, SamplingConfig
from models.config import RankerConfig
from models.device import resolve_device  # noqa: E402
from pipelines import io
from pipelines.config import Config, DataConfig, config_hash, config_to_dict
from pipelines.datasets import import_obd
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.ranking import RankerData, evaluate_split, fit, prepare_data

log = logging.getLogger("ranker_compare")
OBD_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "obd_zozotown"
OBD_DATE = date(2019, 11, 29)


def _run(cfg: Config) -> io.RunInfo:
    return io.RunInfo.new(config_to_dict(cfg), config_hash(cfg), run_id="bench")


def synthetic_split(work: Path, preset: str, window: int) -> tuple[Path, date]:
    """Generate the preset, build frames and embeddings of D = second-to-last day (cached under work)."""
    data, out = work / preset / "data", work / preset / f"out-w{window}"
    if not (data / "items.parquet").is_file() or not io.event_dates(data):
        start = time.perf_counter()
        generate(data, PRESETS[preset])
        log.info("generated %s in %.1f s", preset, time.perf_counter() - start)
    dt = io.event_dates(data)[-2]
    features = FeaturesConfig(id_buckets={"user_id": 50_000, "item_id": 20_000})
    cfg = Config(data=DataConfig(dir=data, out=out, train_window_days=window), features=features)
    if not io.is_committed(out, "frames", dt):
        start = time.perf_counter()
        build_frames(data, out, dt, cfg.data, cfg.columns, cfg.features, cfg.sampling, 0, _run(cfg))
        log.info("frames %s in %.1f s", dt, time.perf_counter() - start)
    if not io.is_committed(out, "embeddings", dt):
        start = time.perf_counter()
        embed_items(data, out, dt, EmbeddingsConfig(device="cpu"), _run(cfg), progress=False)
        log.info("embeddings %s in %.1f s", dt, time.perf_counter() - start)
    return out, dt


def obd_split(work: Path, src: Path) -> tuple[RankerData, dict[str, Any]]:
    """Import OBD, build frames of 2019-11-29, keep positives + real (shown, unclicked) negatives."""
    data, out = work / "obd" / "data", work / "obd" / "out"
    if not (data / "items.parquet").is_file():
        import_obd(src, data)
    cfg = Config(
        data=DataConfig(dir=data, out=out, train_window_days=5, history_lookback_days=1),
        sampling=SamplingConfig(ratio=300, real_negative_share=1.0),
        features=FeaturesConfig(
            id_buckets={"user_id": 1_000, "item_id": 500}, default_buckets=200, crosses=[]
        ),
    )
    if not io.is_committed(out, "frames", OBD_DATE):
        build_frames(data, out, OBD_DATE, cfg.data, cfg.columns, cfg.features, cfg.sampling, 0, _run(cfg))
    full = prepare_data(out, OBD_DATE, item_content=False)
    kept: dict[str, Path] = {}
    stats: dict[str, Any] = {}
    for name, path in (("train", full.train), ("valid", full.valid), ("eval", full.eval)):
        df = pl.read_parquet(path).filter(pl.col("source") != "sampled")
        kept[name] = work / "obd" / f"{name}_real.parquet"
        df.write_parquet(kept[name])
        stats[name] = {"rows": df.height, "clicks": int(df["label"].sum())}
    return replace(full, train=kept["train"], valid=kept["valid"], eval=kept["eval"]), stats


def run_one(cfg: RankerConfig, data: RankerData, seed: int, device: torch.device) -> dict[str, Any]:
    """Train on data.train (early stopping on data.valid) and evaluate on data.eval."""
    start = time.perf_counter()
    model, result, _ = fit(cfg, data, seed, device)
    seconds = time.perf_counter() - start
    test = evaluate_split(model, data.eval, data, device)
    return {
        "auc": test["auc"],
        "logloss": test["logloss"],
        "gauc": test["gauc"],
        "valid_auc": result.best_auc,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "samples_per_s": result.samples_per_s,
        "epochs": len(result.history),
        "seconds": seconds,
    }


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(rows: list[dict[str, Any]], std: bool = False) -> str:
    head = "| model | test AUC | test logloss | test GAUC | params | train samples/s | epochs |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if std:
            cells = [f"{_fmt(r[k])} ± {_fmt(r[k + '_std'])}" for k in ("auc", "logloss", "gauc")]
        else:
            cells = [_fmt(r[k]) for k in ("auc", "logloss", "gauc")]
        lines.append(
            f"| {r['name']} | {' | '.join(cells)} | {r['parameters']:,} | {r['samples_per_s']:,.0f} | {r['epochs']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ranker_bench"))
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--window", type=int, default=7, help="train_window_days of the synthetic split")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the OBD runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-ablations", action="store_true")
    ap.add_argument("--skip-obd", action="store_true")
    ap.add_argument("--obd-src", type=Path, default=OBD_SRC)
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    base = RankerConfig(
        epochs=args.epochs, patience=1, batch_size=args.batch_size, lr=args.lr, amp=device.type == "cuda"
    )
    report: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": base.model_dump(),
    }

    out, dt = synthetic_split(args.work, args.preset, args.window)
    data = prepare_data(out, dt)
    no_content = prepare_data(out, dt, item_content=False)
    rows_of = {k: pl.scan_parquet(p).select(pl.len()).collect().item() for k, p in
               (("train", data.train), ("valid", data.valid), ("eval", data.eval))}  # fmt: skip
    report["synthetic"] = {
        "preset": args.preset,
        "dt": dt.isoformat(),
        "window": args.window,
        "rows": rows_of,
    }
    print(f"\n## synthetic {args.preset}: D={dt}, rows {rows_of}, device {device}\n", flush=True)

    main_rows = []
    for name in ("lr", "fm", "dcnv2", "dcnmix"):
        row = {"name": name, **run_one(base.model_copy(update={"model": name}), data, 0, device)}
        log.info("%s", row)
        main_rows.append(row)
    # LR is convex and cheap: give it a 10x learning rate and twice the epochs, so that the margin over
    # it is not an artefact of an under-trained baseline
    lr_cfg = base.model_copy(update={"model": "lr", "lr": base.lr * 10, "epochs": base.epochs * 2})
    main_rows.append({"name": "lr (10x lr, 2x epochs)", **run_one(lr_cfg, data, 0, device)})
    print(table(main_rows), flush=True)
    report["synthetic"]["models"] = main_rows

    if not args.skip_ablations:
        variants = [
            ("dcnmix stacked K=4 R=32 (= above)", {}, data),
            ("dcnmix parallel", {"structure": "parallel"}, data),
            ("dcnmix K=1", {"experts": 1}, data),
            ("dcnmix R=16", {"rank": 16}, data),
            ("dcnmix R=64", {"rank": 64}, data),
            ("dcnmix no text/image", {}, no_content),
        ]
        abl = []
        for name, update, d in variants:
            if not update and d is data:
                abl.append({**main_rows[3], "name": name})
                continue
            row = {
                "name": name,
                **run_one(base.model_copy(update={"model": "dcnmix", **update}), d, 0, device),
            }
            log.info("%s", row)
            abl.append(row)
        print("\n### ablations (synthetic)\n\n" + table(abl), flush=True)
        report["synthetic"]["ablations"] = abl

    if not args.skip_obd:
        if not args.obd_src.is_dir():
            print(f"\n{args.obd_src} is absent: OBD table skipped", flush=True)
        else:
            obd, stats = obd_split(args.work, args.obd_src)
            print(f"\n## OBD (real clicks), D={OBD_DATE}, {stats}, {args.seeds} seeds\n", flush=True)
            obd_rows = []
            for name in ("lr", "fm", "dcnv2", "dcnmix"):
                cfg = base.model_copy(
                    update={"model": name, "batch_size": 256, "epochs": max(args.epochs, 5)}
                )
                runs = [run_one(cfg, obd, seed, device) for seed in range(args.seeds)]
                row: dict[str, Any] = {"name": name, "parameters": runs[0]["parameters"]}
                for k in ("auc", "logloss", "gauc", "samples_per_s", "epochs"):
                    vals = np.array([r[k] for r in runs if r[k] is not None], dtype=float)
                    row[k] = float(vals.mean()) if vals.size else None
                    row[k + "_std"] = float(vals.std()) if vals.size else None
                row["epochs"] = round(row["epochs"], 1)
                row["runs"] = runs
                log.info("%s", {k: v for k, v in row.items() if k != "runs"})
                obd_rows.append(row)
            print(table(obd_rows, std=True), flush=True)
            report["obd"] = {"dt": OBD_DATE.isoformat(), "rows": stats, "models": obd_rows}

    report["wall_seconds"] = time.perf_counter() - started
    print(f"\nwall time {report['wall_seconds']:.0f} s", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
