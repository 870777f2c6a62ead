"""The evaluation report: metrics read by shape, full-funnel metrics, sections that say "not available",
inlined plots, trends, and a render check in headless Chromium (skipped when no browser is installed)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from pipelines import io
from pipelines.report import (
    NA,
    calibration_tables,
    collect,
    importance_tables,
    ranking_table,
    retrieval_table,
    singular_value_lists,
    write_report,
)

D1, D2 = date(2024, 3, 1), date(2024, 3, 2)

# the shapes the retriever and ranker stages write (pipelines/retriever.py, pipelines/ranking.py)
RETRIEVER_METRICS = {
    "dt": "2024-03-01",
    "valid": {"recall@50": 0.5, "history": [0.4, 0.5]},
    "eval": {
        "present": True,
        "ks": [10, 50],
        "eval_users": 12,
        "model": {"recall@10": 0.2, "recall@50": 0.4, "ndcg@10": 0.1, "coverage@10": 0.3},
        "popularity_7d": {"recall@10": 0.1, "recall@50": 0.15},
        "als": {"status": "not installed"},
    },
}
RANKER_METRICS = {
    "model": "dcnmix",
    "valid_auc_history": [0.6, 0.7],
    "valid": {
        "auc": 0.7,
        "logloss": 0.5,
        "gauc": 0.6,
        "calibration": {"predicted": [0.1, 0.5], "observed": [0.2, 0.4], "counts": [5, 5], "ece": 0.1},
    },
    "eval": {"auc": 0.68, "logloss": 0.52, "gauc": None},
    "importance": {"split": "eval", "auc_drop": {"item_id": 0.05, "hist": 0.1}},
    "cross_singular_values": [{"top": [4.0, 2.0, 0.5], "n": 3}, {"top": [3.0, 1.0], "n": 2}],
}


def _run() -> io.RunInfo:
    return io.RunInfo(run_id="r1", config_hash="cafe", code_revision="test", config={})


def _commit_metrics(out: Path, dt: date) -> None:
    for ds, metrics in (("retriever", RETRIEVER_METRICS), ("ranker", RANKER_METRICS)):
        with io.staged_partition(out, ds, dt, _run()) as stage:
            stage.write_json("metrics.json", metrics)


def test_retrieval_metrics_are_read_by_shape():
    # lists, bools, strings and coverage@K are not retrieval metrics; groups are the paths without the metric
    assert retrieval_table(RETRIEVER_METRICS) == {
        "valid": {"recall@50": 0.5},
        "eval.model": {"recall@10": 0.2, "recall@50": 0.4, "ndcg@10": 0.1},
        "eval.popularity_7d": {"recall@10": 0.1, "recall@50": 0.15},
    }
    assert retrieval_table({"model": {"Recall_at_5": 0.3, "hitrate@5": 0.6}}) == {
        "model": {"recall@5": 0.3, "hit_rate@5": 0.6}
    }


def test_ranking_sections_are_read_by_shape():
    # gauc None is dropped; ece sits under calibration but belongs to the split
    assert ranking_table(RANKER_METRICS) == {
        "valid": {"auc": 0.7, "logloss": 0.5, "gauc": 0.6, "ece": 0.1},
        "eval": {"auc": 0.68, "logloss": 0.52},
    }
    assert calibration_tables(RANKER_METRICS) == {"valid": {"predicted": [0.1, 0.5], "observed": [0.2, 0.4]}}
    assert importance_tables(RANKER_METRICS) == {"importance.auc_drop": {"item_id": 0.05, "hist": 0.1}}
    assert singular_value_lists(RANKER_METRICS) == {"cross_singular_values": [[4.0, 2.0, 0.5], [3.0, 1.0]]}


def test_empty_output_gives_a_report_that_says_not_available(tmp_path: Path):
    result = write_report(tmp_path, D1)
    page = Path(result["html"]).read_text()
    assert page.count(NA) >= 8  # every section
    assert "<img class" not in page and _pngs(page) == []
    metrics = json.loads(Path(result["metrics_path"]).read_text())
    assert metrics["retrieval"] is None and metrics["funnel"] is None and metrics["headline"] == {}
    assert result["html"] == str(io.partition_dir(tmp_path, "reports", D1) / "report.html")


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_with_metrics_has_plots_and_trends(tmp_path: Path):
    _commit_metrics(tmp_path, D1)
    first = write_report(tmp_path, D1, validation={"events": 100, "users": 10, "items": 5})
    page = Path(first["html"]).read_text()
    # Recall@K curves, calibration, importance, 2-layer singular values; no trend plot with one date
    assert len(_pngs(page)) == 4
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in _pngs(page))
    assert "trends (a single date so far): not available" in page
    assert first["headline"] == {
        "retrieval.recall@50": 0.4,
        "retrieval.recall@10": 0.2,
        "retrieval.ndcg@10": 0.1,
        "ranking.auc": 0.68,  # eval wins over valid
        "ranking.gauc": 0.6,  # eval has no GAUC: valid's
        "ranking.logloss": 0.52,
    }
    _commit_metrics(tmp_path, D2)
    second = write_report(tmp_path, D2)
    assert len(_pngs(Path(second["html"]).read_text())) == 5  # + trends
    trend = collect(tmp_path, D2)["trend"]
    assert [row["date"] for row in trend] == ["2024-03-01", "2024-03-02"]
    assert collect(tmp_path, D2, trend_days=1)["trend"] == [{"date": "2024-03-02", **second["headline"]}]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path: Path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH (CI installs the Debian package `chromium`)")
    _commit_metrics(tmp_path, D1)
    _commit_metrics(tmp_path, D2)
    write_report(tmp_path, D1)
    html_path = Path(write_report(tmp_path, D2)["html"])
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    # the page's own load handler counted the images that decoded (naturalWidth > 0) and the script errors
    assert attrs.get("data-images") == "5"
    assert attrs.get("data-images-loaded") == "5"
    assert attrs.get("data-errors") == "0"
    console_errors = [
        line
        for line in proc.stderr.splitlines()
        if "CONSOLE" in line and re.search(r"error|uncaught", line, re.I)
    ]
    assert console_errors == []


def test_funnel_stage_figures_reach_the_report(tmp_path: Path):
    ev = {
        "present": True, "users": 40, "positives": 55, "coverage": 1.0, "horizon": ["2024-03-02"],
        "published": {"recall@50": 0.4, "ndcg@10": 0.2}, "popularity": {"recall@50": 0.1, "ndcg@10": 0.05},
        "als": "not enough positives (3)",
    }  # fmt: skip
    training = {"validation": {"ranker": {"ndcg@10": 0.3}, "merged": {"ndcg@10": 0.2}}}
    with io.staged_partition(tmp_path, "funnel", D1, _run()) as stage:
        stage.write_json("metrics.json", {"order": "ranker", "eval": ev, "training": training})
    got = collect(tmp_path, D1)
    assert got["funnel"]["order"] == "ranker" and got["funnel"]["methods"]["published"]["ndcg@10"] == 0.2
    assert got["headline"]["funnel.published.ndcg@10"] == 0.2
    page = write_report(tmp_path, D1)["html"]
    text = Path(page).read_text()
    assert "Published order: <b>ranker</b>" in text and "not enough positives (3)" in text
    assert "Validation (held-out users" in text and len(_pngs(text)) >= 1
