"""Benchmark of the synthetic data generator: wall time, events/s and peak memory per preset.

    .venv/bin/python benchmarks/generate.py            # small and medium
    .venv/bin/python benchmarks/generate.py --large    # also large (~20M events, several minutes)

Each preset runs in a fresh child process (`python benchmarks/generate.py --child PRESET DIR`) that
generates into a temporary folder and reports its own peak resident set size,
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (KiB on Linux), read at the end of the child: the memory of
the whole generation (interpreter and imports included), not of one preset after another. The folder is
deleted afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(preset: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from pipelines.datasets.synthetic import PRESETS, generate

    t0 = time.perf_counter()
    summary = generate(out, PRESETS[preset])
    wall = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result = {
        "preset": preset,
        "events": summary["events"],
        "users": summary["users"],
        "items": summary["items"],
        "images": summary["images_written"],
        "events_per_type": summary["events_per_type"],
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mib": disk / 2**20,
    }
    print(json.dumps(result))


def _run(preset: str, keep: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"synthetic-{preset}-"))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", preset, str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1]) | {"dir": str(out) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", action="store_true", help="also run the large preset")
    parser.add_argument("--keep", action="store_true", help="keep the generated folders")
    parser.add_argument("--child", nargs=2, metavar=("PRESET", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return
    presets = ["small", "medium"] + (["large"] if args.large else [])
    print(f"{'preset':<8}{'events':>12}{'wall s':>9}{'events/s':>12}{'peak RSS MiB':>14}{'disk MiB':>10}")
    for preset in presets:
        r = _run(preset, args.keep)
        rate = r["events"] / r["wall_s"]
        print(
            f"{preset:<8}{r['events']:>12,}{r['wall_s']:>9.1f}{rate:>12,.0f}"
            f"{r['peak_rss_mib']:>14.0f}{r['disk_mib']:>10.1f}"
            + (f"  kept in {r['dir']}" if r["dir"] else ""),
            flush=True,
        )
        print(
            f"        users {r['users']:,}, items {r['items']:,}, images {r['images']:,}, {r['events_per_type']}"
        )


if __name__ == "__main__":
    main()
