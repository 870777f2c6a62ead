"""Do the item embeddings carry meaning? Nearest neighbours on real titles and real product photos.

    .venv/bin/python benchmarks/embedding_neighbours.py [--data ../shared/data] [--titles 2000] [--seed 0]

Text (packaged all-MiniLM-L6-v2) on `amazon_games_llmrank/Games.item`: a random sample of titles; each title
that names exactly one platform family (PlayStation / Xbox / Nintendo) is a query, and we measure the share
of its top-5 cosine neighbours (among the other labelled titles) of the same family, against the rate of a
random pair. The same is repeated after deleting the platform words from every title, so any agreement left
comes from what the rest of the title says (franchises, publishers), not from the shared word.

Images (the training-free colour/edge descriptor; no CLIP weights are available offline) on the 5,000 JPEGs
of `fashion_product_images_small`: share of each photo's top-5 neighbours with the same articleType and with
the same baseColour, against the random-pair rate, for the whole descriptor and for each block alone.
MiniLM on the same catalogue's titles is printed as a reference point.

Random-pair rate of a label: mean over queries q of (n_label(q) - 1) / (N - 1), i.e. the chance that a
uniformly drawn other item shares q's label. Prints everything; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.embeddings import (  # noqa: E402
    ColourEdgeDescriptor,
    SentenceTextEncoder,
    decode_image,
    encode_batched,
    l2_normalise,
)

K = 5
PLATFORMS = {
    "PlayStation": r"\b(playstation|ps ?[1-5]|psp|ps ?vita|vita|sony)\b",
    "Xbox": r"\b(xbox|x-box|kinect)\b",
    "Nintendo": r"\b(nintendo|wii ?u?|3ds|2ds|nds|ds|gamecube|game ?boy|gba|switch|n64|snes|nes|amiibo)\b",
}


def top_k(emb: np.ndarray, k: int = K) -> np.ndarray:
    """emb: [N, D] float32, L2-normalised. Returns [N, k] int64, each row's k most cosine-similar other rows."""
    sim = emb @ emb.T  # (N, N)
    np.fill_diagonal(sim, -np.inf)
    part = np.argpartition(-sim, k, axis=1)[:, :k]  # (N, k) unordered
    order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def agreement(labels: np.ndarray, nbrs: np.ndarray) -> tuple[float, float]:
    """labels: [N] int64. nbrs: [N, K] int64. Returns (share of neighbours with the query's label, random rate)."""
    same = float((labels[nbrs] == labels[:, None]).mean())
    counts = np.bincount(labels)
    base = float(((counts[labels] - 1) / (len(labels) - 1)).mean())
    return same, base


def codes(values: pl.Series) -> np.ndarray:
    return values.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)


def platform_family(titles: pl.Series) -> pl.Series:
    """[N] str: the one platform family a title names, null when it names none or several."""
    lower = titles.str.to_lowercase()
    hits = pl.DataFrame({name: lower.str.contains(rx) for name, rx in PLATFORMS.items()})
    n = hits.sum_horizontal()
    fam = pl.select(
        pl.coalesce([pl.when(hits[name]).then(pl.lit(name)) for name in PLATFORMS]).alias("f")
    ).to_series()
    return pl.select(pl.when(n == 1).then(fam)).to_series()


def strip_platforms(titles: pl.Series) -> pl.Series:
    out = titles.str.to_lowercase()
    for rx in PLATFORMS.values():
        out = out.str.replace_all(rx, " ")
    return out.str.replace_all(r"\s+", " ").str.strip_chars(" -,:()[]/")


def text_section(data: Path, n_titles: int, seed: int, text: SentenceTextEncoder) -> None:
    games = pl.read_csv(
        data / "amazon_games_llmrank" / "Games.item", separator="\t", quote_char=None, infer_schema_length=0
    ).rename({"item_id:token": "item_id", "title:token_seq": "title"})
    sample = games.filter(pl.col("title").str.strip_chars() != "").sample(n_titles, seed=seed)
    titles = sample["title"]
    t0 = time.perf_counter()
    emb = encode_batched(text, titles.to_list(), 64, progress=False)
    secs = time.perf_counter() - t0
    print(
        f"\n## Text: {n_titles} random Games.item titles (seed {seed}), {text.model_id}, {secs:.1f} s to encode"
    )

    nbrs = top_k(emb)
    rng = np.random.default_rng(seed)
    for q in rng.choice(n_titles, 4, replace=False):
        print(f"\nquery: {titles[int(q)]}")
        for j in nbrs[q]:
            print(f"   {float(emb[q] @ emb[j]):.3f}  {titles[int(j)]}")

    fam = platform_family(titles)
    keep = fam.is_not_null().to_numpy()
    labels = codes(fam.filter(fam.is_not_null()))
    sizes = fam.drop_nulls().value_counts(sort=True)
    print(
        f"\ntitles naming exactly one platform family: {int(keep.sum())} of {n_titles}: "
        + ", ".join(f"{r[0]} {r[1]}" for r in sizes.iter_rows())
    )
    same, base = agreement(labels, top_k(emb[keep]))
    print(f"top-{K} neighbours with the same platform family: {same:.3f} (random pair {base:.3f})")
    stripped = strip_platforms(titles.filter(pl.Series(keep)))
    emb_s = encode_batched(text, stripped.to_list(), 64, progress=False)
    same_s, _ = agreement(labels, top_k(emb_s))
    print(f"  same, platform words deleted from the titles first: {same_s:.3f} (random pair {base:.3f})")


def image_section(data: Path, seed: int, text: SentenceTextEncoder) -> None:
    root = data / "fashion_product_images_small"
    styles = pl.read_csv(root / "styles_merged.csv", infer_schema_length=0)
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    items = pl.DataFrame({"id": ids}).join(styles, on="id", how="left", maintain_order="left")
    images = [decode_image((root / "images" / f"{i}.jpg").read_bytes()) for i in ids]
    ok = np.array([im is not None for im in images])
    items = items.filter(pl.Series(ok))
    images = [im for im in images if im is not None]
    enc = ColourEdgeDescriptor()
    t0 = time.perf_counter()
    emb = encode_batched(enc, images, 256, progress=False)
    secs = time.perf_counter() - t0
    print(
        f"\n## Images: {len(images)} fashion photos ({int((~ok).sum())} unreadable), {enc.model_id}, "
        f"dim {enc.dim}, {secs:.1f} s to encode"
    )

    article, colour = codes(items["articleType"].fill_null("?")), codes(items["baseColour"].fill_null("?"))
    rgb = np.concatenate([enc._pixels(images[i : i + 512]) for i in range(0, len(images), 512)])
    variants = {
        "full descriptor": emb,
        "colour histogram only": l2_normalise(enc.colour_histogram(rgb)),
        "4x4 colour layout only": l2_normalise(enc.colour_layout(rgb)),
        "edge orientations only": l2_normalise(enc.edge_histogram(rgb)),
    }
    print(f"\n| embedding | top-{K} same articleType | top-{K} same baseColour |")
    print("|---|---|---|")
    base_a = base_c = 0.0
    for name, e in variants.items():
        nbrs = top_k(e)
        sa, base_a = agreement(article, nbrs)
        sc, base_c = agreement(colour, nbrs)
        print(f"| {name} | {sa:.3f} | {sc:.3f} |")
    t0 = time.perf_counter()
    temb = encode_batched(text, items["productDisplayName"].fill_null("").to_list(), 64, progress=False)
    nbrs_t = top_k(temb)
    print(
        f"| MiniLM on the titles (reference; titles name the type and colour) | "
        f"{agreement(article, nbrs_t)[0]:.3f} | {agreement(colour, nbrs_t)[0]:.3f} |"
    )
    print(f"| random pair | {base_a:.3f} | {base_c:.3f} |")
    print(
        f"({len(set(article.tolist()))} articleTypes, {len(set(colour.tolist()))} baseColours; "
        f"titles encoded in {time.perf_counter() - t0:.1f} s)"
    )

    nbrs = top_k(emb)
    rng = np.random.default_rng(seed)
    rows = items.select("id", "articleType", "baseColour").rows()
    for q in rng.choice(len(images), 4, replace=False):
        qi = rows[int(q)]
        print(f"\nquery {qi[0]}: {qi[1]} / {qi[2]}")
        for j in nbrs[q]:
            r = rows[int(j)]
            print(f"   {float(emb[q] @ emb[j]):.3f}  {r[0]}: {r[1]} / {r[2]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--titles", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data} does not exist; fix: pass --data pointing at the shared real-data folder")
    text = SentenceTextEncoder("packaged:all-MiniLM-L6-v2", device="cpu")
    text_section(args.data, args.titles, args.seed, text)
    image_section(args.data, args.seed, text)


if __name__ == "__main__":
    main()
