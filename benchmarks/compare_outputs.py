"""Check that a change preserves behaviour: the nightly flow of two code revisions on the same data, every
output file compared.

    .venv/bin/python benchmarks/compare_outputs.py                  # HEAD against the working tree
    .venv/bin/python benchmarks/compare_outputs.py --base v0.3 --work /tmp/same
    .venv/bin/python benchmarks/compare_outputs.py --base HEAD~5 --new HEAD       # two commits

The small synthetic preset is generated once into `<work>/data` (with the working tree's generator); the
nightly flow for its second-to-last day then runs once with the code of `--base` (a `git worktree` of that
revision in `<work>/base-src`) and once with the working tree (or `--new`, checked out the same way), each
in its own process (temporary Prefect
server) writing `<work>/out-base` and `<work>/out-new`. Every file of both output folders is compared:

* Parquet, `.npy`, `.faiss` and every other file: byte for byte; where the bytes differ, Parquet is read
  back and compared as tables (same rows and columns in the same order or not), `.npy` as arrays;
* `.pt` checkpoints: tensor by tensor (`torch.load(weights_only=True)`);
* JSON (manifests, configs, metrics): as data, with the output folder's path written as `<out>` and
  without the keys that name a run or time it (ids, creation times, code revision, config hash, durations,
  throughputs); a difference is printed with the key paths that differ;
* left out: the HTML reports (they embed the run's time), Prefect's cache keys and the embedding cache's
  chunk files (named by time; the embeddings partition itself is compared).

Prints one line per file that differs or exists on one side only, and exits 1 when any does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"run_id", "model_id", "created", "created_at", "committed_at", "started_at", "finished_at",
            "code_revision", "config_hash", "seconds", "train_seconds", "samples_per_s", "hostname", "pid",
            "flow_run_id", "time", "published_at"}  # fmt: skip
SKIP_SUFFIXES = (".html", ".png", ".lock")
SKIP_PARTS = (".prefect", "_cache", ".locks", ".staging")


def _run(cmd: list[str], src: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), PREFECT_LOGGING_LEVEL="WARNING")
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {src}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _recsys(src: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from flows.cli import app; app()", *args]


def _volatile(key: str) -> bool:
    """A key that names or times a run ("created", "config_hash", "fit_s"; flattened "funnel.seconds.x")."""
    return any(part in VOLATILE or part.endswith("_s") for part in key.split("."))


def _strip(obj: Any, out: str) -> Any:
    """obj without run ids and timings; the output folder's path as <out>."""
    if isinstance(obj, dict):
        if set(obj) >= {"id", "run_id"}:  # a model's id names the run that made it: "<dataset>/dt=D@<run_id>"
            obj = {**obj, "id": str(obj["id"]).replace(str(obj["run_id"]), "<run>")}
        return {k: _strip(v, out) for k, v in obj.items() if not _volatile(k)}
    if isinstance(obj, list):
        return [_strip(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<out>")
    return obj


def _paths(a: Any, b: Any, at: str = "") -> list[str]:
    """The key paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in _paths(a.get(k), b.get(k), f"{at}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for n, (x, y) in enumerate(zip(a, b, strict=True)) for p in _paths(x, y, f"{at}[{n}]")]
    return [] if a == b else [at or "."]


def compare_file(a: Path, b: Path, roots: tuple[Path, Path]) -> str | None:
    """None when the two files hold the same thing; otherwise what differs, in a few words."""
    if a.suffix == ".json":
        ja = _strip(json.loads(a.read_text()), str(roots[0]))
        jb = _strip(json.loads(b.read_text()), str(roots[1]))
        diff = _paths(ja, jb)
        return f"JSON differs at {', '.join(diff[:6])}" if diff else None
    if a.suffix == ".pt":
        import torch

        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        sa, sb = sa.get("state_dict", sa), sb.get("state_dict", sb)
        if sa.keys() != sb.keys():
            return "checkpoint keys differ"
        bad = [k for k in sa if isinstance(sa[k], torch.Tensor) and not torch.equal(sa[k], sb[k])]
        return f"tensors differ: {bad[:3]}" if bad else None
    if a.read_bytes() == b.read_bytes():
        return None
    if a.suffix == ".parquet":
        import polars as pl

        ta, tb = pl.read_parquet(a), pl.read_parquet(b)
        if ta.equals(tb):
            return "same table, different bytes (Parquet metadata or encoding)"
        if (
            ta.columns == tb.columns
            and ta.height == tb.height
            and ta.sort(ta.columns).equals(tb.sort(tb.columns))
        ):
            return "same rows in a different order"
        return f"table differs ({ta.shape} vs {tb.shape})"
    if a.suffix == ".npy":
        import numpy as np

        return None if np.array_equal(np.load(a), np.load(b)) else "array differs"
    return "bytes differ"


def compare_trees(a: Path, b: Path) -> list[str]:
    """One line per file that differs between output folders a and b (or exists in one only)."""

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file()
            and not p.name.endswith(SKIP_SUFFIXES)
            and not set(p.relative_to(root).parts) & set(SKIP_PARTS)
        }

    fa, fb = files(a), files(b)
    lines = [f"only in {a.name}: {f}" for f in sorted(fa - fb)] + [
        f"only in {b.name}: {f}" for f in sorted(fb - fa)
    ]
    for f in sorted(fa & fb):
        why = compare_file(a / f, b / f, (a, b))
        if why:
            lines.append(f"{f}: {why}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree against")
    parser.add_argument("--new", default=None, help="git revision to compare (default: the working tree)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recsys-compare"))
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not data.exists():
        _run(_recsys(ROOT, "generate", "--preset", args.preset, "--data", str(data)), ROOT)
    days = sorted(p.name.removeprefix("dt=") for p in (data / "events").glob("dt=*"))
    dt = days[-2]
    trees = {"base": (work / "base-src", args.base), "new": (work / "new-src", args.new)}
    made = []
    try:
        for name, (src, rev) in trees.items():
            if rev is None:
                src = ROOT
            else:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(src)], cwd=ROOT, capture_output=True
                )
                shutil.rmtree(src, ignore_errors=True)
                subprocess.run(["git", "worktree", "add", "--detach", str(src), rev], cwd=ROOT, check=True,
                               capture_output=True)  # fmt: skip
                made.append(src)
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"nightly {dt} with the {name} code ({rev or 'working tree'}) -> {out}", flush=True)
            _run(_recsys(src, "nightly", "--date", dt, f"--data.dir={data}", f"--data.out={out}"), src)
    finally:
        for src in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=ROOT, capture_output=True)
    lines = compare_trees(work / "out-base", work / "out-new")
    print("\n".join(lines) if lines else "every output file holds the same content")
    sys.exit(1 if lines else 0)


if __name__ == "__main__":
    main()
