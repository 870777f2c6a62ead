"""End-to-end benchmark of the nightly flow on synthetic data: wall time per stage, peak memory, rows/s.

    .venv/bin/python benchmarks/nightly.py                      # small and medium presets
    .venv/bin/python benchmarks/nightly.py --presets small --large --ranker.epochs=1
    .venv/bin/python benchmarks/nightly.py --work /tmp/bench    # keep data and outputs there

Each preset is generated once (reused when `<work>/<preset>/data` exists), then the flow runs for the
second-to-last day (so D+1 exists for evaluation) in a fresh child process with a temporary Prefect server,
so peak RSS is that of one nightly run (imports included, the Prefect server process excluded). Stage
times are the task runs' own run times read back from the Prefect API; rows are read from the committed
manifests. Extra `--section.key=value` arguments are passed to the flow as config overrides.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("validate", "embeddings", "frames", "train-retriever", "train-ranker", "funnel", "publish", "report",
          "commit-run")  # fmt: skip


def _stage_rows(out: Path, dt) -> dict[str, int]:  # noqa: ANN001
    from pipelines import io

    def rows(ds: str) -> dict[str, int]:
        return io.read_manifest(out, ds, dt).get("rows", {}) if io.is_committed(out, ds, dt) else {}

    ranker = io.read_manifest(out, "ranker", dt) if io.is_committed(out, "ranker", dt) else {}
    frames = rows("frames")
    published = sum(rows(ds).get("part-0", 0) for ds in ("candidates", "scores"))
    return {
        "embeddings": rows("embeddings").get("items", 0),
        "frames": sum(frames.values()),
        "train-retriever": rows("two_tower").get("part-0", 0),
        "train-ranker": frames.get("ranker_train", 0) * int(ranker.get("epochs_run", 1) or 1),
        "funnel": rows("scores").get("part-0", 0),
        "publish": published,
    }


def _task_times(flow_run_id) -> dict[str, float]:  # noqa: ANN001
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    out: dict[str, float] = {}
    for tr in asyncio.run(read()):
        name = tr.name.rsplit("-", 1)[0]
        out[name] = out.get(name, 0.0) + tr.total_run_time.total_seconds()
    return out


def child(preset: str, work: Path, overrides: list[str], generate_only: bool) -> None:
    """Generate (once) or run the flow for one preset; print one JSON line."""
    from pipelines import io

    data, out = work / preset / "data", work / preset / "out"
    if generate_only:
        if not (data / "items.parquet").is_file():
            from pipelines.datasets.synthetic import PRESETS, generate

            generate(data, PRESETS[preset])
        print(json.dumps({"data": str(data)}))
        return
    from prefect.testing.utilities import prefect_test_harness

    from flows.nightly import nightly

    dates = io.event_dates(data)
    dt = dates[-2]
    with prefect_test_harness(server_startup_timeout=180):
        t0 = time.perf_counter()
        state = nightly(date=dt.isoformat(), overrides=[f"--data.dir={data}", f"--data.out={out}", *overrides],
                        force=True, return_state=True)  # fmt: skip
        wall = time.perf_counter() - t0
        if not state.is_completed():
            raise SystemExit(f"flow failed: {state.message}")
        summary = state.result()
        times = _task_times(state.state_details.flow_run_id)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "preset": preset,
                "date": dt.isoformat(),
                "events": summary["validation"].get("events"),
                "wall_s": wall,
                "stage_s": times,
                "rows": _stage_rows(out, dt),
                "peak_rss_mb": peak_mb,
                "metrics": summary.get("metrics", {}),
            }
        )
    )


def _table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"\n{r['preset']}: D={r['date']}, {r['events']:,} input events, flow wall {r['wall_s']:.1f} s, "
            f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GB"
        )
        lines.append(f"  {'stage':<16}{'seconds':>10}{'rows':>12}{'rows/s':>12}")
        for s in STAGES:
            sec = r["stage_s"].get(s)
            rows = r["rows"].get(s)
            rate = f"{rows / sec:,.0f}" if rows and sec else ""
            lines.append(
                f"  {s:<16}{'' if sec is None else f'{sec:.2f}':>10}{'' if rows is None else f'{rows:,}':>12}{rate:>12}"
            )
        if r.get("metrics"):
            lines.append("  metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items())))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--large", action="store_true", help="also the large preset (~20M events; slow)")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and outputs (default: temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        parser.error(f"unexpected arguments {bad}; overrides are written --section.key=value")
    work = args.work or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    if args.child:
        child(args.child, work, overrides, args.generate_only)
        return
    presets = [*args.presets, *(["large"] if args.large else [])]
    results = []
    for preset in presets:
        base = [sys.executable, __file__, "--child", preset, "--work", str(work)]
        subprocess.run([*base, "--generate-only"], check=True, cwd=ROOT, capture_output=True, text=True)
        proc = subprocess.run([*base, *overrides], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{preset}: the flow run failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    sys.stdout.write(f"work folder: {work}\noverrides: {overrides or 'none'}\n" + _table(results) + "\n")


if __name__ == "__main__":
    main()
