"""What each nightly stage reads, as a fingerprint: the part of a stage's cache key that its inputs make.

A stage's cached result is valid while the files and partitions it reads are unchanged. Each function below
names those inputs from the stage's own definitions (the frames' `Window`, the funnel's `read_window`), so
the cache key cannot drift from what the stage actually reads; the flow turns the fingerprint into a
Prefect cache key (`flows/nightly.py`).

Fingerprints are cheap: input files by (path, size, mtime), never their bytes; upstream partitions by their
manifest (it names the run that committed them, and when).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

from pipelines import io
from pipelines.config import Config, DataConfig
from pipelines.frames.layout import Window
from pipelines.funnel.inputs import input_files as funnel_files
from pipelines.funnel.inputs import lookback_days
from pipelines.names import EMBEDDINGS, FRAMES, RANKER, RETRIEVER


def digest(obj: Any) -> str:
    """16 hex digits of the sha256 of `obj` as sorted JSON (non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_fingerprint(paths: list[Path]) -> str:
    """Hash of (path, size, mtime) of the given files; a missing file counts as "missing"."""
    rows = []
    for p in sorted(paths):
        try:
            st = p.stat()
            rows.append([str(p), st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            rows.append([str(p), "missing"])
    return digest(rows)


def tree_fingerprint(root: Path, skip: tuple[str, ...] = ()) -> str:
    """Hash of (relative path, size, mtime) of every file under `root` except the top-level folders `skip`."""
    rows = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:  # stat never opens: a named pipe or device here is harmless
                st = p.stat()
            except OSError:  # a dangling link (validation warns when an image path names it)
                rows.append([str(p.relative_to(root)), "unreadable"])
                continue
            rows.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return digest(rows)


def partition_fingerprint(out: Path, dataset: str, dt: date | None) -> str:
    """Hash of a committed partition's manifest; "missing" when none. The `published` section that
    publishing adds is left out: it does not change the data."""
    if dt is None or not io.is_committed(out, dataset, dt):
        return "missing"
    manifest = io.read_manifest(out, dataset, dt)
    manifest.pop("published", None)
    return digest(manifest)


def embeddings(data_dir: Path, out: Path, dt: date) -> str:
    """The catalogue (every file under the data folder but the events: items.parquet, images) and the
    previous embeddings partition (its vectors are reused and its cross-modal encoder warm-started)."""
    previous = partition_fingerprint(out, EMBEDDINGS, io.previous_committed(out, EMBEDDINGS, dt))
    return digest([tree_fingerprint(data_dir, skip=("events",)), previous])


def frames(data: DataConfig, dt: date) -> str:
    """users, items and the event days of the frames window of D."""
    return files_fingerprint(Window.of(data, dt).input_files(data.dir))


def _trained(out: Path, dt: date, model: str) -> str:
    """A model stage: frames and embeddings of D, and the previous model partition it warm-starts from."""
    upstream = [partition_fingerprint(out, ds, dt) for ds in (FRAMES, EMBEDDINGS)]
    return digest([*upstream, partition_fingerprint(out, model, io.previous_committed(out, model, dt))])


def retriever(out: Path, dt: date) -> str:
    return _trained(out, dt, RETRIEVER)


def ranker(out: Path, dt: date) -> str:
    return _trained(out, dt, RANKER)


def funnel(cfg: Config, dt: date) -> str:
    """frames, embeddings and retriever of D, and the input files of the funnel's read window."""
    data, out = cfg.data, cfg.data.out
    parts = [partition_fingerprint(out, ds, dt) for ds in (FRAMES, EMBEDDINGS, RETRIEVER)]
    return digest([*parts, files_fingerprint(funnel_files(data.dir, dt, lookback_days(data), cfg.funnel))])
