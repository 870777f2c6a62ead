"""What the nightly flow publishes, against the anchors, on a temporal split of each data set.

    .venv/bin/python benchmarks/funnel.py                        # synthetic medium + every shared set found
    .venv/bin/python benchmarks/funnel.py --sets tmall --work /tmp/funnel
    .venv/bin/python benchmarks/funnel.py --sets medium --funnel.ranker=false   # overrides go to the flow

Per data set: the nightly flow (`flows.nightly`, real Prefect run) for day D with the days after D left as
the horizon; then the funnel stage's own evaluation (funnel/dt=D/metrics.json) is printed: coverage of the
returning users with history, Recall@50 and NDCG@10 of popularity, implicit ALS, each candidate source
alone, the two-tower lists, the merged candidates, the ranker order and the published order, each with its
ratio to popularity, all on the same users and purchase exclusions.

Data sets: `medium` (synthetic, generated once into the work folder, D = the day before the last 3) and
`tmall` (../shared/data/tmall_multibehavior, imported with `recsys import taobao --tz Asia/Shanghai`;
D = 2017-11-30, horizon 12-01..12-03). A set whose source is absent is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ROWS = ("published", "ranker", "merged", "recent", "covis", "ann", "two_tower", "popularity", "als")


def _recsys(*args: str) -> None:
    recsys = Path(sys.executable).parent / "recsys"
    subprocess.run([str(recsys), *args], check=True, cwd=ROOT, capture_output=True, text=True)


def prepare(name: str, work: Path) -> tuple[Path, date] | None:
    """(data folder, run date D) of a data set, generated or imported into `work` once; None when absent."""
    data = work / name / "data"
    if name == "medium":
        if not (data / "items.parquet").is_file():
            _recsys("generate", "--preset", "medium", "--data", str(data))
    elif name == "tmall":
        src = SHARED / "tmall_multibehavior"
        if not src.is_dir():
            return None
        if not (data / "items.parquet").is_file():
            _recsys("import", "taobao", "--src", str(src), "--data", str(data), "--tz", "Asia/Shanghai")
    else:
        raise SystemExit(f"unknown data set {name!r}; choose medium or tmall")
    days = sorted(
        date.fromisoformat(p.name[3:]) for p in (data / "events").iterdir() if p.name.startswith("dt=")
    )
    return data, days[-1] - timedelta(days=3)


def run(name: str, work: Path, overrides: list[str]) -> dict:
    found = prepare(name, work)
    if found is None:
        return {"set": name, "skipped": "source data absent"}
    data, dt = found
    out = work / name / "out"
    from flows.nightly import nightly

    t0 = time.perf_counter()
    nightly(
        date=dt.isoformat(), overrides=[f"--data.dir={data}", f"--data.out={out}", *overrides], force=True
    )
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "funnel" / f"dt={dt.isoformat()}" / "metrics.json").read_text())
    return {"set": name, "date": dt.isoformat(), "wall_s": round(wall, 1), **metrics}


def table(result: dict) -> str:
    if "skipped" in result:
        return f"\n{result['set']}: skipped ({result['skipped']})\n"
    ev = result["eval"]
    lines = [
        f"\n{result['set']}  D={result['date']}  horizon={ev.get('horizon')}  users={ev.get('users')}  "
        f"coverage={ev.get('coverage')}  published order={result['order']}  flow wall {result['wall_s']} s",
        "| list | Recall@50 | NDCG@10 | Recall@50 / pop | NDCG@10 / pop |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        m = ev.get(row)
        if isinstance(m, dict) and "recall@50" in m:
            lines.append(
                f"| {row} | {m['recall@50']:.4f} | {m['ndcg@10']:.4f} | {m.get('recall_vs_popularity', '-')} "
                f"| {m.get('ndcg_vs_popularity', '-')} |"
            )
        elif m is not None:
            lines.append(f"| {row} | {m} | | | |")
    val = (result.get("training") or {}).get("validation")
    if val:
        lines.append(
            "validation day (held-out users): " + json.dumps({k: v["ndcg@10"] for k, v in val.items()})
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="medium,tmall")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recsys-funnel-bench"))
    args, overrides = parser.parse_known_args()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        for name in args.sets.split(","):
            sys.stdout.write(table(run(name.strip(), args.work, overrides)))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
