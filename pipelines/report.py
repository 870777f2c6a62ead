"""The evaluation report of a day: one self-contained HTML file and its metrics.json, in reports/dt=D/.

Everything comes from what the stages committed: the manifests of frames/ and embeddings/ (data summary,
hash collisions, modality coverage), retriever/dt=D/metrics.json (retrieval metrics of the model and its
baselines), ranker/dt=D/metrics.json (AUC, logloss, GAUC, calibration, field importance, singular values of
the cross matrices), the published scores/candidates with frames' eval_retrieval.parquet (full-funnel
NDCG@10 and Recall@10, computed here), and the metrics.json of earlier reports (trends). A missing piece
makes its section say "not available"; it never fails the report.

The metrics files of the model stages are read by shape, not by a fixed schema: numbers whose key ends in
`recall@K` / `ndcg@K` / `hit_rate@K` (or sit under a `recall` dict keyed by K) are retrieval metrics of the
group their path names; `auc`, `gauc`, `logloss`, `ece` are ranking metrics; a dict with `predicted` and
`observed` lists is a calibration table; a dict of numbers under a key containing `importance` is a
per-field importance; lists of numbers under a key containing `singular` are singular values.

Plots are matplotlib PNGs inlined as base64 `data:` URIs; the page loads nothing from the network. A small
inline script records on `<body>` how many images decoded (`data-images-loaded`) and any script error
(`data-errors`), so a headless browser can check the page.
"""

from __future__ import annotations

import base64
import html
import io as stdio
import json
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import io
from pipelines.funnel.layout import NDCG_K as FUNNEL_K
from pipelines.names import (
    CANDIDATES,
    EMBEDDINGS,
    FRAMES,
    FUNNEL,
    METRICS_FILE,
    RANKER,
    REPORTS,
    RETRIEVER,
    RUNS,
    SCORES,
)

log = logging.getLogger(__name__)

DATASET = REPORTS
HTML_FILE = "report.html"
NA = "not available"

_RETRIEVAL_RE = re.compile(r"^(?P<metric>recall|ndcg|hit_?rate|hr)(?:@|_at_|_at|_)?(?P<k>\d+)$")
_RANKING_KEYS = ("auc", "gauc", "logloss", "ece")


# ---------------------------------------------------------------- reading metrics by shape


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, (*path, str(k)))
    else:
        yield path, tree


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if np.isfinite(v) else None


def retrieval_table(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{group: {"recall@10": x, ...}} from a metrics tree (group = the path without the metric part).

    >>> retrieval_table({"model": {"recall@10": 0.2}, "popularity": {"recall": {"10": 0.1}}})
    {'model': {'recall@10': 0.2}, 'popularity': {'recall@10': 0.1}}
    """
    out: dict[str, dict[str, float]] = {}
    for path, value in _leaves(metrics):
        x = _number(value)
        if x is None or not path:
            continue
        low = [p.lower() for p in path]
        m = _RETRIEVAL_RE.match(low[-1])
        if m:
            metric, k, group = m["metric"], m["k"], path[:-1]
        elif len(low) >= 2 and low[-1].isdigit() and _RETRIEVAL_RE.match(low[-2] + "@" + low[-1]):
            metric, k, group = _RETRIEVAL_RE.match(low[-2] + "@" + low[-1])["metric"], low[-1], path[:-2]
        else:
            continue
        metric = {"hitrate": "hit_rate", "hr": "hit_rate"}.get(metric, metric)
        out.setdefault(".".join(group) or "model", {})[f"{metric}@{int(k)}"] = x
    return out


def ranking_table(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{group: {"auc": x, "gauc": y, "logloss": z, "ece": e}} from a metrics tree.

    >>> ranking_table({"valid": {"auc": 0.7, "calibration": {"ece": 0.01}}})
    {'valid': {'auc': 0.7, 'ece': 0.01}}
    """
    out: dict[str, dict[str, float]] = {}
    for path, value in _leaves(metrics):
        x = _number(value)
        if x is None or not path or path[-1].lower() not in _RANKING_KEYS:
            continue
        group = [p for p in path[:-1] if p.lower() != "calibration"]
        out.setdefault(".".join(group) or "model", {})[path[-1].lower()] = x
    return out


def _subtrees(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, tree
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _subtrees(v, (*path, str(k)))


def _numbers(v: Any) -> list[float] | None:
    if isinstance(v, list) and v and all(_number(x) is not None for x in v):
        return [float(x) for x in v]
    return None


def calibration_tables(metrics: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """{group: {"predicted": [...], "observed": [...]}} for every calibration table in the tree."""
    out = {}
    for path, sub in _subtrees(metrics):
        if isinstance(sub, Mapping):
            pred, obs = _numbers(sub.get("predicted")), _numbers(sub.get("observed"))
            if pred and obs and len(pred) == len(obs):
                out[".".join(p for p in path if p.lower() != "calibration") or "model"] = {
                    "predicted": pred,
                    "observed": obs,
                }
    return out


def importance_tables(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{group: {field: importance}} for every dict of numbers with 'importance' in its path.

    >>> importance_tables({"importance": {"split": "eval", "auc_drop": {"brand": 0.01, "hist": 0.2}}})
    {'importance.auc_drop': {'brand': 0.01, 'hist': 0.2}}
    """
    out = {}
    for path, sub in _subtrees(metrics):
        if any("importance" in p.lower() for p in path) and isinstance(sub, Mapping) and sub:
            values = {str(k): _number(v) for k, v in sub.items()}
            if all(v is not None for v in values.values()):
                out[".".join(path)] = values
    return out


def singular_value_lists(metrics: Mapping[str, Any]) -> dict[str, list[list[float]]]:
    """{group: [layer 1 values, layer 2 values, ...]} under keys containing 'singular'; a layer is a list of
    numbers or a dict holding one under "top" or "values".

    >>> singular_value_lists({"cross_singular_values": [{"top": [3.0, 1.0], "n": 2}, {"top": [2.0]}]})
    {'cross_singular_values': [[3.0, 1.0], [2.0]]}
    """
    out = {}
    for path, sub in _subtrees(metrics):
        if not path or "singular" not in path[-1].lower():
            continue
        layers = list(sub.values()) if isinstance(sub, Mapping) else sub
        if isinstance(layers, list) and _numbers(layers):
            layers = [layers]
        if not isinstance(layers, list):
            continue
        layers = [x.get("top", x.get("values")) if isinstance(x, Mapping) else x for x in layers]
        if layers and all(_numbers(x) for x in layers):
            out[".".join(path)] = [_numbers(x) for x in layers]
    return out


# ---------------------------------------------------------------- collecting


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _manifest(out: Path, dataset: str, dt: date) -> dict[str, Any] | None:
    return io.read_manifest(out, dataset, dt) if io.is_committed(out, dataset, dt) else None


def _stage_metrics(out: Path, dataset: str, dt: date) -> dict[str, Any] | None:
    if not io.is_committed(out, dataset, dt):
        return None
    return _read_json(io.partition_dir(out, dataset, dt) / "metrics.json")


FUNNEL_METHODS = (
    "published", "ranker", "merged", "recent", "covis", "ann", "als", "category", "two_tower", "popularity",
)  # fmt: skip


def _funnel(out: Path, dt: date) -> dict[str, Any] | None:
    """The funnel stage's evaluation (every returning user over the horizon, each list and baseline) when
    funnel/dt=D is committed, else None."""
    staged = _stage_metrics(out, FUNNEL, dt)
    if staged is not None:
        ev = staged.get("eval") or {}
        result: dict[str, Any] = {"order": staged.get("order"), "training": staged.get("training")}
        if ev.get("present"):
            result.update(
                users=ev.get("users"),
                positives=ev.get("positives"),
                coverage=ev.get("coverage"),
                horizon=ev.get("horizon"),
                k=FUNNEL_K,
                methods={m: ev[m] for m in FUNNEL_METHODS if m in ev},
            )
        return result
    return None


def data_summary(out: Path, dt: date, validation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Events/users/items, frames rows and hash collisions, modality coverage; absent parts are omitted."""
    summary: dict[str, Any] = {}
    if validation:
        summary["inputs"] = {
            k: validation[k] for k in ("events", "users", "items", "partitions") if k in validation
        }
    frames = _manifest(out, FRAMES, dt)
    if frames:
        summary["frames_rows"] = frames.get("rows", {})
        collisions = frames.get("collisions") or {}
        summary["collisions"] = {
            name: {k: c.get(k) for k in ("distinct", "used", "colliding", "buckets", "expected_colliding")}
            for name, c in collisions.items()
        }
        summary["window"] = frames.get("window")
    emb = _manifest(out, EMBEDDINGS, dt)
    if emb:
        counts = emb.get("counts", {})
        n = counts.get("items") or 0
        if n:
            summary["coverage"] = {
                "items": n,
                "text": 1.0 - counts.get("text_missing", 0) / n,
                "image": 1.0 - counts.get("image_missing", 0) / n,
            }
        summary["embedding_models"] = {"text": emb.get("text_model"), "image": emb.get("image_model")}
    return summary


def headline(report: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers trended over dates and shown in the flow summary: the model's eval (D+1) retrieval
    metrics, the ranker's AUC/GAUC/logloss on eval (else valid), the full-funnel NDCG@10."""
    out: dict[str, float] = {}
    retr = report.get("retrieval") or {}
    model_groups = [g for g in retr if g.split(".")[-1] == "model"]
    for key in ("recall@50", "recall@10", "ndcg@10"):
        for g in model_groups:
            if key in retr[g]:
                out[f"retrieval.{key}"] = retr[g][key]
    ranking = report.get("ranking") or {}
    for split in ("valid", "eval"):  # eval, when present, wins
        for key in ("auc", "gauc", "logloss"):
            if split in ranking and ranking[split].get(key) is not None:
                out[f"ranking.{key}"] = ranking[split][key]
    funnel = report.get("funnel") or {}
    methods = funnel.get("methods") or funnel
    for name in ("published", "ranker", "retriever", "merged", "popularity", "als"):
        if isinstance(methods.get(name), Mapping) and f"ndcg@{FUNNEL_K}" in methods[name]:
            out[f"funnel.{name}.ndcg@{FUNNEL_K}"] = methods[name][f"ndcg@{FUNNEL_K}"]
    return out


def collect(
    out: Path, dt: date, *, validation: Mapping[str, Any] | None = None, trend_days: int = 30
) -> dict:
    """Every number of the report of day `dt` as one JSON-able dict (what metrics.json holds)."""
    out = Path(out)
    if validation is None:  # `recsys report` after the fact: the run marker has the validation stats
        runs = _manifest(out, RUNS, dt)
        summary = _read_json(io.partition_dir(out, RUNS, dt) / "summary.json") if runs else None
        validation = (summary or {}).get("validation")
    retr = _stage_metrics(out, RETRIEVER, dt)
    rank = _stage_metrics(out, RANKER, dt)
    report: dict[str, Any] = {
        "date": dt.isoformat(),
        "data": data_summary(out, dt, validation),
        "retrieval": retrieval_table(retr) if retr else None,
        "ranking": ranking_table(rank) if rank else None,
        "calibration": calibration_tables(rank) if rank else None,
        "importance": importance_tables(rank) if rank else None,
        "singular_values": singular_value_lists(rank) if rank else None,
        "funnel": _funnel(out, dt),
        "published": {
            ds: (_manifest(out, ds, dt) or {}).get("published", {}).get("rows") for ds in (CANDIDATES, SCORES)
        },
    }
    report["headline"] = headline(report)
    trend = []
    earlier = sorted(
        date.fromisoformat(p.parent.name.removeprefix("dt="))
        for p in io.dataset_dir(out, DATASET).glob(f"dt=*/{METRICS_FILE}")
        if p.parent.name.removeprefix("dt=") < dt.isoformat()
    )
    earlier = earlier[len(earlier) - (trend_days - 1) :] if trend_days > 1 else []
    for d in earlier:
        past = _read_json(io.partition_dir(out, DATASET, d) / METRICS_FILE) or {}
        trend.append({"date": d.isoformat(), **(past.get("headline") or {})})
    trend.append({"date": dt.isoformat(), **report["headline"]})
    report["trend"] = trend
    return report


# ---------------------------------------------------------------- rendering


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(width: float = 5.5, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def plot_recall_curves(table: Mapping[str, Mapping[str, float]]) -> str | None:
    """Recall@K against K, one line per model/baseline; None when no group has two or more K."""
    fig, ax = _figure()
    drawn = 0
    for group, row in sorted(table.items()):
        ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("recall@"))
        if len(ks) >= 2:
            ax.plot(ks, [row[f"recall@{k}"] for k in ks], marker="o", label=group)
            drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set(xlabel="K", ylabel="Recall@K", title="Retrieval: Recall@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_calibration(tables: Mapping[str, Mapping[str, list[float]]]) -> str:
    fig, ax = _figure(4.5, 4.0)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for group, t in sorted(tables.items()):
        ax.plot(t["predicted"], t["observed"], marker="o", label=group)
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_importance(values: Mapping[str, float], title: str) -> str:
    names = sorted(values, key=lambda n: values[n])
    fig, ax = _figure(5.5, max(2.0, 0.3 * len(names) + 1))
    ax.barh(names, [values[n] for n in names], color="#4c72b0")
    ax.set(xlabel="AUC drop when the field is permuted", title=title)
    return _png(fig)


def plot_singular_values(layers: list[list[float]], title: str) -> str:
    fig, ax = _figure()
    for i, sv in enumerate(layers):
        ax.semilogy(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-12), marker=".", label=f"layer {i + 1}")
    ax.set(xlabel="index", ylabel="singular value", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_trends(trend: list[Mapping[str, Any]]) -> str | None:
    keys = sorted({k for row in trend for k in row if k != "date"})
    if len(trend) < 2 or not keys:
        return None
    fig, ax = _figure(6.5, 3.6)
    dates = [row["date"] for row in trend]
    for key in keys:
        ax.plot(dates, [row.get(key, np.nan) for row in trend], marker="o", label=key)
    ax.set(title="Trends", xlabel="run date")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_funnel(methods: Mapping[str, Any]) -> str | None:
    """Bars of Recall@50 and NDCG@10 per list (lists with "not enough positives" are left out)."""
    rows = [(n, m) for n, m in methods.items() if isinstance(m, Mapping) and "recall@50" in m]
    if not rows:
        return None
    fig, ax = _figure(6.5, 3.4)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [m["recall@50"] for _, m in rows], 0.4, label="Recall@50")
    ax.bar(x + 0.2, [m.get(f"ndcg@{FUNNEL_K}", 0.0) for _, m in rows], 0.4, label=f"NDCG@{FUNNEL_K}")
    ax.set_xticks(x, [n for n, _ in rows], rotation=30, ha="right")
    ax.legend()
    return _png(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: Mapping[str, Mapping[str, Any]], first: str) -> str:
    cols = sorted({c for r in rows.values() for c in r}, key=lambda c: (c.split("@")[0], len(c), c))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first, *cols])
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(g)}</td>"
        + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols)
        + "</tr>"
        for g, r in sorted(rows.items())
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _na(what: str) -> str:
    return f'<p class="na">{html.escape(what)}: {NA}.</p>'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.na{color:#a33}img.plot{max-width:100%;margin:.5em 0}
"""
_SCRIPT = """
window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message))});
window.addEventListener('load',function(){var imgs=document.images,ok=0;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++}}
document.body.setAttribute('data-images',String(imgs.length));
document.body.setAttribute('data-images-loaded',String(ok));
document.body.setAttribute('data-errors',String(window.__errors.length));});
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, plots as base64 PNGs, no external requests)."""
    dt = report["date"]
    parts = [f"<h1>Recommendation report {html.escape(dt)}</h1>"]

    parts.append("<h2>Data</h2>")
    data = report.get("data") or {}
    if data.get("inputs"):
        parts.append(_table({"inputs": data["inputs"]}, ""))
    else:
        parts.append(_na("input counts (events, users, items)"))
    if data.get("frames_rows"):
        parts.append(_table({"rows": data["frames_rows"]}, "frames"))
    if data.get("coverage"):
        parts.append("<h3>Modality coverage</h3>" + _table({"share of items": data["coverage"]}, ""))
    else:
        parts.append(_na("modality coverage"))
    if data.get("collisions"):
        parts.append("<h3>Hash collisions</h3>" + _table(data["collisions"], "field"))
    else:
        parts.append(_na("hash collisions"))

    parts.append("<h2>Retrieval</h2>")
    retr = report.get("retrieval")
    if retr:
        parts.append(_table(retr, "model / baseline"))
        curve = plot_recall_curves(retr)
        parts.append(_img(curve, "Recall@K curves") if curve else _na("Recall@K curve (fewer than two K)"))
    else:
        parts.append(_na("retrieval metrics"))

    parts.append("<h2>Ranking</h2>")
    if report.get("ranking"):
        parts.append(_table(report["ranking"], "split"))
    else:
        parts.append(_na("ranking metrics"))
    if report.get("calibration"):
        parts.append(_img(plot_calibration(report["calibration"]), "calibration plot"))
    else:
        parts.append(_na("calibration"))
    if report.get("importance"):
        for name, values in sorted(report["importance"].items()):
            parts.append(_img(plot_importance(values, name), f"field importance {name}"))
    else:
        parts.append(_na("per-field importance"))
    if report.get("singular_values"):
        for name, layers in sorted(report["singular_values"].items()):
            parts.append(_img(plot_singular_values(layers, name), f"singular values {name}"))
    else:
        parts.append(_na("cross-matrix singular values"))

    funnel = report.get("funnel")
    if funnel and "order" in funnel:
        parts.append("<h2>Full funnel (every returning user over the horizon)</h2>")
        parts.append(f"<p>Published order: <b>{html.escape(str(funnel.get('order')))}</b>.</p>")
        training = funnel.get("training") or {}
        if training.get("validation"):
            valid = {n: m for n, m in training["validation"].items() if isinstance(m, Mapping)}
            parts.append("<p>Validation (held-out users of the run date, lists as of its start):</p>")
            parts.append(_table(valid, "order"))
        elif training.get("reason"):
            parts.append(f"<p>Why: {html.escape(str(training['reason']))}.</p>")
        methods = funnel.get("methods") or {}
        if methods:
            parts.append(
                f"<p>{funnel.get('users')} users with a positive in {html.escape(str(funnel.get('horizon')))} "
                f"and history; coverage {funnel.get('coverage')}.</p>"
            )
            rows = {n: (m if isinstance(m, Mapping) else {"status": m}) for n, m in methods.items()}
            parts.append(_table(rows, "list"))
            png = plot_funnel(methods)
            if png:
                parts.append(_img(png, "funnel recall and ndcg per list"))
        else:
            parts.append(_na("funnel evaluation (needs events after the run date)"))
    elif funnel:
        parts.append(f"<h2>Full funnel (NDCG@{FUNNEL_K} on the positives of the next day)</h2>")
        rows = {
            n: funnel[n] for n in ("ranker", "retriever", "popularity") if isinstance(funnel.get(n), Mapping)
        }
        parts.append(f"<p>{funnel['users']} users with a positive on D+1.</p>" + _table(rows, "order"))
    else:
        parts.append(_na("full-funnel metrics (needs scores or candidates and events of D+1)"))

    parts.append("<h2>Trends</h2>")
    trend_png = plot_trends(report.get("trend") or [])
    parts.append(_img(trend_png, "trends") if trend_png else _na("trends (a single date so far)"))

    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>recsys report {html.escape(dt)}'
        f"</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{body}</body></html>"
    )


def markdown_summary(report: Mapping[str, Any], html_path: Path) -> str:
    """Short Markdown summary (the Prefect artifact): headline metrics and where the HTML report is."""
    lines = [
        f"# recsys {report['date']}",
        "",
        f"Report: `{html_path}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in sorted(report.get("headline", {}).items()):
        lines.append(f"| {k} | {v:.4f} |")
    pub = report.get("published") or {}
    lines += ["", "Published rows: " + ", ".join(f"{k}={v}" for k, v in pub.items())]
    return "\n".join(lines)


def write_report(
    out: Path, dt: date, *, validation: Mapping[str, Any] | None = None, trend_days: int = 30
) -> dict[str, Any]:
    """Collect, render and write reports/dt=D/report.html and metrics.json (each replaced atomically).

    Returns paths, the headline metrics, a Markdown summary and a table (list of dicts) for artifacts.
    """
    report = collect(Path(out), dt, validation=validation, trend_days=trend_days)
    metrics_path = io.write_report_file(out, dt, METRICS_FILE, json.dumps(report, indent=2, default=str))
    html_path = io.write_report_file(out, dt, HTML_FILE, render_html(report))
    table = [{"metric": k, "value": v} for k, v in sorted(report["headline"].items())]
    log.info("report %s: %s", dt, html_path)
    return {
        "html": str(html_path),
        "metrics_path": str(metrics_path),
        "headline": report["headline"],
        "markdown": markdown_summary(report, html_path),
        "table": table,
    }
