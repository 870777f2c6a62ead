"""Benchmark: our DCN-Mix vs DeepCTR-Torch's `DCNMix` on the same split and fields, side by side.

Split: the synthetic `medium` frames of benchmarks/ranker_compare.py (train: ranker_train, test: eval_ranker
of D+1; built there and cached under --work). Fields, identical for both models:

    hashed fields  every bkt_ field of the vocab (user, item, crossed), embedding dim --dim
    history        `hist` (last L item_id buckets, 0 = padding) as a mean of the item_id embedding rows
                   (DeepCTR: VarLenSparseFeat sharing the item_id table, combiner "mean", 0 masked)
    dense          log1p(cnt_*) and num_* columns
    (no text / image: DeepCTR has no gated modality input)

Architecture, identical where the reference allows it: parallel structure (cross net beside the DNN), 2 cross
layers, 4 experts, rank 32, tanh, softmax gate, DNN (256, 128), no dropout, Adam lr 1e-3, batch 1024, the same
number of epochs, no early stopping. Differences the reference imposes: DeepCTR adds a linear (wide) logit
term and applies its L2 to whole embedding tables (ours: to the rows a batch reads).

samples/s is training examples over the wall time of the training epochs: ours streams Parquet through
pipelines.batches inside that time; DeepCTR's fit reads in-memory numpy arrays (loaded before the clock).

DeepCTR-Torch lives in its own venv that sees this project's .venv through a .pth file:

    python -m venv /tmp/deepctr-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > /tmp/deepctr-venv/lib/python3.11/site-packages/main.pth
    /tmp/deepctr-venv/bin/pip install deepctr-torch          # 0.3.0; needs torch, tqdm, scikit-learn only
    /tmp/deepctr-venv/bin/python benchmarks/ranker_vs_reference.py [--work /tmp/ranker_bench] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling ranker_compare.py builds the split

from ranker_compare import synthetic_split  # noqa: E402

from features.hashing import bucket_column  # noqa: E402
from models.config import RankerConfig  # noqa: E402
from models.metrics import auc, logloss  # noqa: E402
from pipelines.batches import BatchSpec  # noqa: E402
from pipelines.ranking import RankerData, evaluate_split, fit, prepare_data  # noqa: E402

log = logging.getLogger("ranker_vs_reference")


def our_run(data: RankerData, cfg: RankerConfig, seed: int) -> dict[str, Any]:
    """Train ours for cfg.epochs epochs (patience = epochs: no early stop); test metrics on data.eval."""
    start = time.perf_counter()
    model, result, _ = fit(cfg, data, seed, "cpu")
    wall = time.perf_counter() - start
    test = evaluate_split(model, data.eval, data, "cpu")
    rows = pl.scan_parquet(data.train).select(pl.len()).collect().item()
    return {
        "auc": test["auc"],
        "logloss": test["logloss"],
        "samples_per_s": result.samples_per_s,
        "train_rows": rows,
        "epochs": len(result.history),
        "wall_s_incl_valid": wall,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def _inputs(path: Path, spec: BatchSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """DeepCTR's input dict (one array per feature name) and labels [n] float32, from a frames file."""
    df = pl.read_parquet(path, columns=spec.columns())
    x: dict[str, np.ndarray] = {f: df[bucket_column(f)].to_numpy().astype(np.int64) for f in spec.fields}
    for c in spec.counts:
        x[c] = np.log1p(df[c].to_numpy().astype(np.float32))
    for c in spec.numeric:
        x[c] = df[c].to_numpy().astype(np.float32)
    if spec.hist_len:
        padded = df.select(
            pl.concat_list(
                [
                    pl.col("hist").list.head(spec.hist_len),
                    pl.lit([0] * spec.hist_len, dtype=pl.List(pl.Int32)),
                ]
            )
            .list.head(spec.hist_len)
            .list.to_array(spec.hist_len)
        ).to_series()
        x["hist"] = padded.to_numpy().astype(np.int64).reshape(df.height, spec.hist_len)  # (n, L)
    return x, df["label"].to_numpy().astype(np.float32)


def reference_run(data: RankerData, cfg: RankerConfig, seed: int) -> dict[str, Any]:
    """DeepCTR-Torch DCNMix with the same fields and hyper-parameters; test metrics on data.eval."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DCNMix

    spec = data.spec
    sizes = data.vocab.vocab_sizes()
    columns: list[Any] = [SparseFeat(f, sizes[f], embedding_dim=cfg.field_dim) for f in spec.fields]
    columns += [DenseFeat(c, 1) for c in (*spec.counts, *spec.numeric)]
    if spec.hist_len:
        columns.append(
            VarLenSparseFeat(
                SparseFeat(
                    "hist",
                    sizes[data.hist_field],
                    embedding_dim=cfg.field_dim,
                    embedding_name=data.hist_field,
                ),
                maxlen=spec.hist_len,
                combiner="mean",
            )
        )
    x_train, y_train = _inputs(data.train, spec)
    x_test, y_test = _inputs(data.eval, spec)
    model = DCNMix(
        columns,
        columns,
        cross_num=cfg.cross_layers,
        dnn_hidden_units=tuple(cfg.mlp),
        l2_reg_linear=0.0,
        l2_reg_embedding=cfg.l2_embedding,
        l2_reg_cross=0.0,
        dnn_dropout=cfg.dropout,
        low_rank=cfg.rank,
        num_experts=cfg.experts,
        seed=seed,
        device="cpu",
    )
    model.compile(torch.optim.Adam(model.parameters(), lr=cfg.lr), "binary_crossentropy", metrics=[])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    probs = model.predict(x_test, batch_size=8192).reshape(-1)
    return {
        "auc": auc(y_test, probs),
        "logloss": logloss(y_test, probs),
        "samples_per_s": y_train.size * cfg.epochs / seconds,
        "train_rows": int(y_train.size),
        "epochs": cfg.epochs,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ranker_bench"))
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for both models (0: default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out, dt = synthetic_split(args.work, args.preset, args.window)
    data = prepare_data(out, dt, item_content=False)
    if data.eval is None:
        raise ValueError(f"frames/dt={dt} under {out} has no eval_ranker (no D+1); fix: pick an earlier date")
    cfg = RankerConfig(
        model="dcnmix",
        structure="parallel",
        field_dim=16,
        cross_layers=2,
        experts=4,
        rank=32,
        activation="tanh",
        gate="softmax",
        mlp=[256, 128],
        dropout=0.0,
        batch_size=1024,
        lr=1e-3,
        epochs=args.epochs,
        patience=args.epochs,
        amp=False,
    )
    rows = {"ours": our_run(data, cfg, args.seed), "deepctr_torch": reference_run(data, cfg, args.seed)}
    import deepctr_torch

    print(f"\nsynthetic {args.preset} D={dt}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"deepctr-torch {deepctr_torch.__version__}\n")  # fmt: skip
    print("| model | test AUC | test logloss | train samples/s | params | epochs |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['auc']:.4f} | {r['logloss']:.4f} | {r['samples_per_s']:,.0f} | {r['parameters']:,} | {r['epochs']} |"
        )
    ratio = rows["ours"]["samples_per_s"] / rows["deepctr_torch"]["samples_per_s"]
    print(
        f"\nAUC ours - reference: {rows['ours']['auc'] - rows['deepctr_torch']['auc']:+.4f}; speed ratio {ratio:.2f}x"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"dt": dt.isoformat(), "runs": rows, "speed_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
