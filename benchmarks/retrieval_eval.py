"""Benchmark: the dual-tower retriever vs 7-day popularity (and implicit ALS), with an ablation.

For each data set it makes sure frames/dt=D and embeddings/dt=D are committed (building them with the real
stages when they are not), loads the inputs once, and for every configuration trains the towers
(`pipelines.retriever.fit`), embeds every item and user, searches the index with the run's purchase
exclusion and scores the ranking on the positives of D+1 (`pipelines.retriever.evaluate`). The baselines
are computed once, on the same users and with the same exclusions.

Configurations (defaults of RetrieverConfig unless named):

    default          logQ on, accidental hits removed, no mixed negatives, text + image on
    no_logq          logQ correction off
    mixed_negatives  B' = --mixed uniform catalogue items per batch
    no_text          text embedding off
    no_image         image embedding off
    no_content       text and image off (hashed attributes only)

Usage::

    .venv/bin/python benchmarks/retrieval_eval.py --synthetic medium [--data DIR] [--out DIR] [--ceiling]
    .venv/bin/python benchmarks/retrieval_eval.py --amazon ../shared/data/amazon_games_llmrank \
        --configs default no_logq --window 49
    options: --epochs N --date YYYY-MM-DD --json results.json --configs NAME ... --threads 1
             --set temperature=0.1 lr=0.0005 (retriever settings applied to every configuration)

--data: an existing synthetic data folder (else the preset is generated under --out). --amazon: the LLMRank
source folder (imported under --out with pipelines.datasets.import_amazon) or an already imported one.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from models.config import RetrieverConfig
from pipelines import io
from pipelines.config import load_config
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.retriever import (
    EVAL_KS,
    embed_and_index,
    evaluate,
    fit,
    load_inputs,
    purchase_mask,
)
from retrieval import index as faiss_index

log = logging.getLogger("retrieval_eval")

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_logq": {"logq_correction": False},
    "mixed_negatives": {"mixed_negatives": 256},
    "no_text": {"use_text": False},
    "no_image": {"use_image": False},
    "no_content": {"use_text": False, "use_image": False},
}


def prepare(data: Path, out: Path, dt: date, window: int) -> None:
    """Commit frames/dt=D and embeddings/dt=D with the real stages when they are not there yet."""
    cfg = load_config(
        overrides=[f"--data.dir={data}", f"--data.out={out}", f"--data.train_window_days={window}"]
    )
    run = io.RunInfo.new({"data": {"dir": str(data)}}, "benchmark")
    if not io.is_committed(out, "frames", dt):
        t0 = time.perf_counter()
        d = cfg.data
        build_frames(data, out, dt, d, cfg.columns, cfg.features, cfg.sampling, 0, run)
        log.info("frames %s built in %.1fs", dt, time.perf_counter() - t0)
    if not io.is_committed(out, "embeddings", dt):
        t0 = time.perf_counter()
        embed_items(data, out, dt, cfg.embeddings, run, progress=False)
        log.info("embeddings %s built in %.1fs", dt, time.perf_counter() - t0)


def run_configs(
    data: Path,
    out: Path,
    dt: date,
    names: list[str],
    epochs: int,
    mixed: int,
    seed: int,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every named configuration; baselines once. Returns a JSON-able report."""
    inputs = load_inputs(out, dt, use_content=True)
    exclude = purchase_mask(inputs, data)
    report: dict[str, Any] = {"dt": dt.isoformat(), "inputs": inputs.figures, "configs": {}}
    base_done = False
    for name in names:
        over = dict(CONFIGS[name])
        if "mixed_negatives" in over:
            over["mixed_negatives"] = mixed
        cfg = RetrieverConfig(**{"epochs": epochs, **(base or {}), **over})
        t0 = time.perf_counter()
        model, result, figures = fit(inputs, cfg, seed, "cpu")
        train_s = time.perf_counter() - t0
        _, user_emb, index = embed_and_index(model, inputs, load_config().index, seed, "cpu")
        _, pos = faiss_index.search_positions(index, user_emb, max(EVAL_KS), exclude=exclude)
        ev = evaluate(inputs, pos, exclude, seed, baselines=not base_done)
        if not base_done:
            report["baselines"] = {k: ev[k] for k in ("popularity_7d", "als")}
            report["eval_users"] = {
                k: ev[k] for k in ("eval_users", "users_evaluated", "users_without_features")
            }
            base_done = True
        report["configs"][name] = {
            "valid_recall@50": result.best_score,
            "eval": ev["model"],
            "epochs_run": figures["epochs_run"],
            "best_epoch": figures["best_epoch"],
            "train_s": round(train_s, 1),
            "samples_per_s": figures["samples_per_s"],
        }
        log.info("%s: valid R@50 %.4f, eval R@50 %.4f (%.0fs)", name, result.best_score,
                 ev["model"]["recall@50"], train_s)  # fmt: skip
    return report


def synthetic_ceiling(data: Path, out: Path, dt: date, preset: str) -> dict[str, Any]:
    """Recall of the generator's own scores: the ceiling a retriever can approach on synthetic data.

    score(u, i) = `pipelines.datasets.synthetic.view_log_weights` (log popularity_{D+1}(i) + log category tilt g_u[c_i]
    + affinity * s(u, i)) + log sigmoid(click logit of (u, i)), s = <u, v_i> plus the content term
    (`pipelines.datasets.synthetic.utility`), from the true hidden variables and the
    planted click crosses (a view picks one of K candidates drawn by popularity tilted by the user's
    subcategory preference, with weight exp(affinity s); then a click follows with that probability).
    Same users, same exclusions as the model.
    """
    import polars as pl

    import pipelines.datasets.synthetic as syn
    from pipelines.retriever import drop_excluded, ranking_metrics, relevant_positions

    spec = syn.PRESETS[preset]
    world = syn.build_world(spec)
    inputs = load_inputs(out, dt, use_content=False)
    exclude = purchase_mask(inputs, data)
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    ev = inputs.eval_pairs.group_by("user_id").agg(pl.col("item_id")).join(rows, on="user_id").sort("user_id")
    user_rows = ev["_u"].to_numpy().astype(np.int64)
    relevant = relevant_positions(inputs, ev["item_id"].to_list())
    wu = world.users.select("user_id").with_row_index("_w")
    wi = world.items.select("item_id").with_row_index("_w")
    u = pl.DataFrame({"user_id": inputs.user_ids[user_rows]}).join(wu, on="user_id", maintain_order="left")
    i = pl.DataFrame({"item_id": inputs.item_ids}).join(wi, on="item_id", maintain_order="left")
    u, i = u["_w"].to_numpy(), i["_w"].to_numpy()
    day = (dt - spec.start).days + 1
    view = syn.view_log_weights(world, spec, u, day)[:, i]  # (Q, N) in item_idx order
    aff = syn.utility(world, spec, u)[:, i]  # (Q, N) u.v plus the content term
    cross = syn.cross_term(world, u[:, None], i[None, :])  # (Q, N)
    z = syn.click_logit(aff, cross)
    score = view - np.log1p(np.exp(-z))  # (Q, N)
    sub = exclude[user_rows]
    extra = int(np.diff(sub.indptr).max(initial=0))
    top = np.argsort(-score, axis=1)[:, : max(EVAL_KS) + extra]
    return ranking_metrics(drop_excluded(top, sub, max(EVAL_KS)), relevant, inputs.n_items)


def table(report: dict[str, Any]) -> str:
    """Markdown table of Recall@10/50/100, NDCG@50 and coverage@100 per method."""
    rows = ["| method | valid R@50 | R@10 | R@50 | R@100 | NDCG@50 | HR@50 | cov@100 | train s |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def line(name: str, m: dict[str, Any], valid: str, secs: str) -> str:
        if "recall@50" not in m:
            return f"| {name} | {m.get('status', '?')} |"
        return (
            f"| {name} | {valid} | {m['recall@10']:.4f} | {m['recall@50']:.4f} | {m['recall@100']:.4f} | "
            f"{m['ndcg@50']:.4f} | {m['hit_rate@50']:.4f} | {m['coverage@100']:.3f} | {secs} |"
        )

    for name, c in report["configs"].items():
        rows.append(line(f"two-tower {name}", c["eval"], f"{c['valid_recall@50']:.4f}", str(c["train_s"])))
    for name, m in report.get("baselines", {}).items():
        rows.append(line(name, m, "", str(m.get("fit_s", ""))))
    if "ceiling" in report:
        rows.append(line("generator's own score (ceiling)", report["ceiling"], "", ""))
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", choices=["small", "medium", "large"], default=None)
    p.add_argument("--amazon", type=Path, default=None, help="LLMRank source folder or an imported one")
    p.add_argument("--data", type=Path, default=None, help="existing synthetic data folder")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--date", type=date.fromisoformat, default=None, help="run date D (default: see docs)")
    p.add_argument("--window", type=int, default=14, help="data.train_window_days")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--mixed", type=int, default=256, help="B' of the mixed_negatives configuration")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--ceiling", action="store_true", help="synthetic: also score the generator's own ranking")
    p.add_argument(
        "--set", nargs="*", default=[], help="retriever settings of every run, e.g. temperature=0.1"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids oversubscribing a busy box)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (args.synthetic is None) == (args.amazon is None):
        p.error("pass exactly one of --synthetic PRESET or --amazon DIR")
    work = args.out or Path(tempfile.mkdtemp(prefix="retrieval_eval-"))
    if args.synthetic:
        from pipelines.datasets.synthetic import PRESETS, generate

        data = args.data or work / "data"
        if not io.items_path(data).is_file():
            t0 = time.perf_counter()
            generate(data, PRESETS[args.synthetic])
            log.info("generated %s in %.0fs", args.synthetic, time.perf_counter() - t0)
        dt = args.date or io.event_dates(data)[-2]  # the last day is D+1, the eval day
    else:
        if io.items_path(args.amazon).is_file():
            data = args.amazon
            dt = args.date or io.event_dates(data)[-2]
        else:
            from pipelines.datasets import import_amazon

            data = work / "amazon"
            if not io.items_path(data).is_file():
                import_amazon(args.amazon, data)
            dt = args.date or io.event_dates(data)[-2]
    out = work / "out"
    prepare(data, out, dt, args.window)
    base = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    report = run_configs(data, out, dt, list(args.configs), args.epochs, args.mixed, args.seed, base)
    report["base"] = base
    report.update({"data": str(data), "window": args.window, "epochs": args.epochs})
    if args.synthetic and args.ceiling:
        report["ceiling"] = synthetic_ceiling(data, out, dt, args.synthetic)
    pop = report["baselines"]["popularity_7d"]["recall@50"]
    for c in report["configs"].values():
        c["vs_popularity_recall@50"] = round(c["eval"]["recall@50"] / pop, 3) if pop > 0 else float("inf")
    print(table(report))
    print(json.dumps({k: v["vs_popularity_recall@50"] for k, v in report["configs"].items()}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
