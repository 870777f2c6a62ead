"""Does the cross-modal encoder trained on the shop's own catalogue align photos with titles?

    .venv/bin/python benchmarks/multimodal.py myntra [--data ../shared/data] [--seed 0] [--epochs 20]
        [--width 16] [--lr 2e-3] [--append docs/benchmarks.md]
    .venv/bin/python benchmarks/multimodal.py synthetic [--work /tmp/recsys-multimodal] [--epochs N]
        [--model-seeds 2] [--only concat "no content"] [--append docs/benchmarks.md]

Parts (one subcommand each; a part is a function `part_<name>(args) -> markdown` registered in PARTS):

* `myntra`: the 5,000 real photos of `fashion_product_images_small` with their product titles. Items are
  split into train / held-out (80/20, seeded). The encoder (models/crossmodal.py, trained from scratch on the
  train items only, frozen MiniLM titles) is compared on the held-out items with
  (b) the training-free colour/edge descriptor mapped linearly to the MiniLM title space (sklearn RidgeCV,
      fitted on the same train items), and (c) random ranking, whose expected Recall@10 is 10 / N_heldout.
  Figures: text->image Recall@10 (each held-out title queries the held-out photos; a hit when its own photo
  is in the top 10), image->text Recall@10 (the reverse), and the articleType purity of the 5 nearest
  held-out photos of each held-out photo (image->image, self excluded).

* `synthetic`: synthetic medium with the content-only signals (a pattern drawn only into the image, a style
  word written only in the title; docs/synthetic-data.md). Embeddings (the cross-modal encoder included) and
  frames of D are built once; then per variant (each fusion strategy with text and image; no content, text
  only, image only with the default fusion; the default without the learned affinity) the retriever, the
  pointwise ranker and the funnel are trained in their own output folder: ranker AUC on D+1 (the mean over
  `--model-seeds` model seeds, with each seed's figure: the data are the same, the initialisation and the
  shuffling differ) with the permutation importance of text, image and the content affinity (first seed),
  the two-tower lists' and the published lists' NDCG@10.

Prints a markdown table; `--append FILE` appends it, with the command, to FILE. The MiniLM title vectors are
kept in `--work` (keyed by the titles' hash) so a rerun with other encoder settings does not re-encode them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.embeddings import (  # noqa: E402
    ColourEdgeDescriptor,
    SentenceTextEncoder,
    decode_image,
    encode_batched,
    image_array,
    l2_normalise,
)
from models.config import CrossModalConfig  # noqa: E402
from models.crossmodal import build_encoder, embed_images, embed_texts, train_encoder  # noqa: E402

K = 10
PURITY_K = 5


def recall_at_k(query: np.ndarray, target: np.ndarray, k: int = K) -> float:
    """query, target: [N, D] float32, L2-normalised, row i of each describing item i.

    Returns the share of rows i whose own target i is among the k targets most similar to query i.

    >>> recall_at_k(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1)
    1.0
    """
    sim = query @ target.T  # (N, N)
    own = np.diag(sim)[:, None]  # (N, 1)
    rank = (sim > own).sum(axis=1)  # (N,) targets strictly better than the right one
    return float((rank < k).mean())


def purity_at_k(emb: np.ndarray, labels: np.ndarray, k: int = PURITY_K) -> float:
    """emb: [N, D] float32, L2-normalised. labels: [N] int64. Share of the k nearest others with the same label."""
    sim = emb @ emb.T  # (N, N)
    np.fill_diagonal(sim, -np.inf)
    nbrs = np.argpartition(-sim, k, axis=1)[:, :k]  # (N, k)
    return float((labels[nbrs] == labels[:, None]).mean())


def _minilm(titles: list[str], work: Path) -> np.ndarray:
    """[N, 384] float32 MiniLM vectors of `titles`, read from / written to `work`."""
    key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    path = work / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path)
    enc = SentenceTextEncoder("packaged:all-MiniLM-L6-v2", "cpu")
    emb = encode_batched(enc, titles, 128, progress=False)
    work.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def load_myntra(data: Path, size: int) -> tuple[pl.DataFrame, np.ndarray, list]:
    """The photographed items with a title: frame (id, title, articleType), pixels [N, S, S, 3], images."""
    root = data / "fashion_product_images_small"
    if not root.is_dir():
        raise SystemExit(f"{root} is absent; fix: pass --data pointing at the folder that holds it")
    styles = pl.read_csv(root / "styles_merged.csv", infer_schema_length=0)
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    items = (
        pl.DataFrame({"id": ids})
        .join(styles, on="id", how="inner", maintain_order="left")
        .filter(pl.col("productDisplayName").str.strip_chars().str.len_chars() > 0)
        .select("id", pl.col("productDisplayName").alias("title"), "articleType")
    )
    images = [decode_image((root / "images" / f"{i}.jpg").read_bytes()) for i in items["id"].to_list()]
    ok = np.array([img is not None for img in images])
    items = items.filter(pl.Series(ok))
    images = [img for img in images if img is not None]
    return items, image_array(images, size), images


def part_myntra(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    cfg = CrossModalConfig(
        epochs=args.epochs, width=args.width, lr=args.lr, dim=args.dim, batch_size=args.batch_size,
        modality_dropout=args.modality_dropout, seed=args.seed, image_size=args.image_size, grid=args.grid,
        image_loss_weight=args.image_loss_weight,
    )  # fmt: skip
    items, pixels, images = load_myntra(args.data, cfg.image_size)
    n = items.height
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(n)
    n_train = int(round(n * 0.8))
    tr, ho = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    text = _minilm(items["title"].to_list(), args.work)  # (N, 384)
    labels = items["articleType"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)

    # (a) the encoder, trained on the train items only
    model = build_encoder(text.shape[1], cfg)
    t0 = time.perf_counter()
    result = train_encoder(model, torch.from_numpy(pixels[tr]), torch.from_numpy(text[tr]))
    train_s = time.perf_counter() - t0
    z_img = embed_images(model, torch.from_numpy(pixels[ho])).numpy()  # (H, D)
    z_text = embed_texts(model, torch.from_numpy(text[ho])).numpy()  # (H, D)

    # (b) descriptor + ridge map into the MiniLM space, fitted on the train items
    from sklearn.linear_model import RidgeCV

    desc = ColourEdgeDescriptor().encode(images)  # (N, 132)
    ridge = RidgeCV(alphas=(0.01, 0.1, 1.0, 10.0, 100.0)).fit(desc[tr], text[tr])
    mapped = l2_normalise(ridge.predict(desc[ho]))  # (H, 384)
    t_ho = text[ho]

    rows = [
        ("trained encoder (ours)", recall_at_k(z_text, z_img), recall_at_k(z_img, z_text),
         purity_at_k(z_img, labels[ho])),
        ("descriptor + ridge map to MiniLM", recall_at_k(t_ho, mapped), recall_at_k(mapped, t_ho),
         purity_at_k(desc[ho], labels[ho])),
    ]  # fmt: skip
    h = len(ho)
    base_purity = float(((np.bincount(labels[ho])[labels[ho]] - 1) / (h - 1)).mean())
    rows.append(("random (expected)", min(K / h, 1.0), min(K / h, 1.0), base_purity))
    lines = [
        f"Myntra `fashion_product_images_small`: {n} photographed items with a title, {len(tr)} train / {h} "
        f"held-out (seed {args.seed}); encoder: width {cfg.width}, grid {cfg.grid}, D {cfg.dim}, {cfg.image_size}px, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, augment {cfg.augment}, modality dropout "
        f"{cfg.modality_dropout}, image-image term weight {cfg.image_loss_weight}; trained in {train_s:.0f} s on {args.threads} CPU threads (final loss "
        f"{result.losses[-1]:.3f}, tau {result.temperature:.3f}; alpha of the ridge {ridge.alpha_}).",
        "",
        f"| held-out ({h} items) | text->image R@{K} | image->text R@{K} | articleType purity@{PURITY_K} (image->image) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {c:.3f} |" for name, a, b, c in rows]
    ratio = rows[0][1] / rows[2][1]
    lines += ["", f"Encoder text->image R@{K}: {ratio:.1f}x random, {rows[0][1] / max(rows[1][1], 1e-9):.1f}x "
              "the descriptor + ridge map."]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------- synthetic medium: fusion and content ablation

# (name, fusion, use_text, use_image, other ranker settings); the content ablations use the default fusion
VARIANTS: tuple[tuple[str, str, bool, bool, dict[str, Any]], ...] = (
    ("concat", "concat", True, True, {}),
    ("late", "late", True, True, {}),
    ("attention", "attention", True, True, {}),
    ("cross_attention", "cross_attention", True, True, {}),
    ("no content", "concat", False, False, {}),
    ("text only", "concat", True, False, {}),
    ("image only", "concat", False, True, {}),
    ("concat, fixed affinity only", "concat", True, True, {"affinity_rank": 0}),
)


def _synthetic_base(work: Path, seed: int) -> tuple[Path, Path, date]:
    """Synthetic medium (content signal on, the generator's default) generated once, and the embeddings and
    frames of its run date D (the day before the last 3), built once into <work>/base and shared by every
    variant: (data, base out, D)."""
    from pipelines import io
    from pipelines.config import Config, DataConfig, config_hash, config_to_dict
    from pipelines.embedding import embed_items
    from pipelines.frames import build_frames

    data, base = work / "data", work / "base"
    if not (data / "items.parquet").is_file():
        recsys = Path(sys.executable).parent / "recsys"
        subprocess.run([str(recsys), "generate", "--preset", "medium", "--data", str(data)], check=True)
    days = io.event_dates(data)
    dt = days[-1] - timedelta(days=3)
    cfg = Config(data=DataConfig(dir=data, out=base))
    run = io.RunInfo.new(config_to_dict(cfg), config_hash(cfg), run_id="multimodal")
    t0 = time.perf_counter()
    if not io.is_committed(base, "embeddings", dt):
        embed_items(data, base, dt, cfg.embeddings, run, progress=False)
    if not io.is_committed(base, "frames", dt):
        build_frames(data, base, dt, cfg.data, cfg.columns, cfg.features, cfg.sampling, seed, run)
    print(f"synthetic medium: D={dt}, embeddings and frames in {time.perf_counter() - t0:.0f} s", flush=True)
    return data, base, dt


def _variant(data: Path, base: Path, dt: date, name: str, fusion: str, text: bool, image: bool,
             extra: dict[str, Any], seed: int, model_seeds: int, epochs: int | None) -> dict[str, Any]:  # fmt: skip
    """Retriever, ranker and funnel of one variant, in <base>/../<name>/ with the shared inputs linked."""
    from pipelines import io
    from pipelines.config import Config, DataConfig, config_hash, config_to_dict
    from pipelines.funnel import funnel_stage
    from pipelines.funnel.inputs import lookback_days
    from pipelines.ranking import train_and_evaluate
    from pipelines.retriever import train_retriever_stage

    out = base.parent / name.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for ds in ("frames", "embeddings"):
        (out / ds).symlink_to(base / ds, target_is_directory=True)
    cfg = Config(data=DataConfig(dir=data, out=out))
    epochs_over = {"epochs": epochs} if epochs else {}
    rcfg = cfg.retriever.model_copy(
        update={"fusion": fusion, "use_text": text, "use_image": image, **epochs_over}
    )
    kcfg = cfg.ranker.model_copy(
        update={"fusion": fusion, "use_text": text, "use_image": image, **epochs_over, **extra}
    )
    cfg = cfg.model_copy(update={"retriever": rcfg, "ranker": kcfg})
    run = io.RunInfo.new(config_to_dict(cfg), config_hash(cfg), run_id=f"multimodal-{name}")
    t0 = time.perf_counter()
    retriever = train_retriever_stage(out, dt, rcfg, cfg.index, seed, "cpu", run)
    t1 = time.perf_counter()
    rankers = [train_and_evaluate(out, dt, kcfg, seed + k, "cpu").metrics for k in range(model_seeds)]
    ranker = rankers[0]
    t2 = time.perf_counter()
    funnel = funnel_stage(
        data, out, dt, cfg.funnel, cfg.ranker, list(cfg.sampling.positive_events), lookback_days(cfg.data),
        rcfg.exclude_purchased, seed, "cpu", run,
    )["metrics"]  # fmt: skip
    t3 = time.perf_counter()
    split = "eval" if "eval" in ranker else "valid"
    drop = (ranker.get("importance") or {}).get("auc_drop") or {}
    ev = funnel.get("eval") or {}
    aucs = [r[split]["auc"] for r in rankers]
    return {
        "variant": name,
        "ranker_auc": float(np.mean(aucs)),
        "ranker_auc_seeds": aucs,
        "auc_split": split,
        "importance_text": drop.get("text"),
        "importance_image": drop.get("image"),
        "importance_affinity": drop.get("affinity"),
        "importance_profile": drop.get("profile"),
        "retriever_recall@50": retriever.get("eval_recall@50"),
        "two_tower_ndcg@10": (ev.get("two_tower") or {}).get("ndcg@10"),
        "funnel_ndcg@10": (ev.get("published") or {}).get("ndcg@10"),
        "funnel_order": funnel.get("order"),
        "seconds": {"retriever": round(t1 - t0), "ranker": round(t2 - t1), "funnel": round(t3 - t2)},
    }


def synthetic(
    work: Path, seed: int, model_seeds: int, epochs: int | None, only: list[str] | None
) -> list[dict[str, Any]]:
    data, base, dt = _synthetic_base(work, seed)
    rows = []
    for name, fusion, text, image, extra in VARIANTS:
        if only and name not in only:
            continue
        row = _variant(data, base, dt, name, fusion, text, image, extra, seed, model_seeds, epochs)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def synthetic_table(rows: list[dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)

    none = next((r["ranker_auc"] for r in rows if r["variant"] == "no content"), None)
    lines = [
        "| variant | ranker AUC (mean) | per seed | vs no content | AUC drop: text | AUC drop: image "
        "| AUC drop: affinity | AUC drop: profile | two-tower NDCG@10 | funnel NDCG@10 (published) "
        "| seconds (retriever, rankers, funnel) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        delta = "" if none is None else f"{r['ranker_auc'] - none:+.4f}"
        s = r["seconds"]
        seeds = ", ".join(f"{a:.4f}" for a in r.get("ranker_auc_seeds", [r["ranker_auc"]]))
        lines.append(
            f"| {r['variant']} | {f(r['ranker_auc'])} | {seeds} | {delta} | {f(r['importance_text'])} "
            f"| {f(r['importance_image'])} | {f(r.get('importance_affinity'))} "
            f"| {f(r.get('importance_profile'))} | {f(r['two_tower_ndcg@10'])} "
            f"| {f(r['funnel_ndcg@10'])} "
            f"| {s['retriever']}, {s['ranker']}, {s['funnel']} |"
        )
    return "\n".join(lines) + "\n"


def part_synthetic(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    rows = synthetic(args.work / "synthetic-medium", args.seed, args.model_seeds, args.epochs, args.only)
    return (
        f"Synthetic medium with the content-only signals (docs/synthetic-data.md; content_signal 1.0), D = the "
        f"day before the last 3, seed {args.seed} (ranker: model seeds {args.seed}..{args.seed + args.model_seeds - 1}), "
        f"{args.threads} CPU threads; ranker AUC on frames eval "
        f"(D+1), permutation importance = AUC drop when the modality is shuffled; funnel NDCG@10 of the "
        f"published lists over D+1..D+3 (every returning user).\n\n" + synthetic_table(rows)
    )


PARTS: dict[str, Callable[[argparse.Namespace], str]] = {"myntra": part_myntra, "synthetic": part_synthetic}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("myntra", help="real photos and titles of fashion_product_images_small")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/recsys-multimodal"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=CrossModalConfig().epochs)
    p.add_argument("--width", type=int, default=CrossModalConfig().width)
    p.add_argument("--image-size", type=int, default=CrossModalConfig().image_size)
    p.add_argument("--grid", type=int, default=CrossModalConfig().grid)
    p.add_argument("--dim", type=int, default=CrossModalConfig().dim)
    p.add_argument("--lr", type=float, default=CrossModalConfig().lr)
    p.add_argument("--batch-size", type=int, default=CrossModalConfig().batch_size)
    p.add_argument("--modality-dropout", type=float, default=CrossModalConfig().modality_dropout)
    p.add_argument("--image-loss-weight", type=float, default=CrossModalConfig().image_loss_weight)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--append", type=Path, default=None, help="append the table and the command to this file")
    q = sub.add_parser(
        "synthetic", help="synthetic medium with content-only signals: fusion and content ablation"
    )
    q.add_argument("--work", type=Path, default=Path("/tmp/recsys-multimodal"))
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--epochs", type=int, default=None, help="epochs of the retriever and ranker (default: config)"
    )
    q.add_argument(
        "--model-seeds", type=int, default=2, help="ranker trainings per variant (seed, seed+1, ...)"
    )
    q.add_argument("--only", nargs="*", default=None, help="run only these variants (names as in the table)")
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--append", type=Path, default=None, help="append the table and the command to this file")
    args = ap.parse_args()
    table = PARTS[args.part](args)
    print(table)
    if args.append is not None:
        cmd = "    .venv/bin/python benchmarks/multimodal.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]
        )
        with open(args.append, "a") as fh:
            fh.write(f"\n{cmd}\n\n{table}\n")


if __name__ == "__main__":
    main()
