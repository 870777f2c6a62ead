"""The `recsys` command line.

Commands that take a config accept `--config FILE` and any number of `--section.key=value` overrides, e.g.
`recsys nightly --date 2024-03-10 --ranker.experts=8 --data.out=/tmp/out`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from pipelines.config import ConfigError, config_to_yaml, load_config, parse_date

app = typer.Typer(
    name="recsys",
    help="E-commerce recommendation pipeline: synthetic data, validation, nightly Prefect flows, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (defaults if absent).")
]


def _overrides(ctx: typer.Context) -> list[str]:
    bad = [a for a in ctx.args if not (a.startswith("--") and "=" in a and "." in a.split("=", 1)[0])]
    if bad:
        raise typer.BadParameter(f"unexpected arguments {bad}; overrides are written --section.key=value")
    return list(ctx.args)


def _config(config: Path | None, ctx: typer.Context, **set_: Any):  # noqa: ANN202
    extra = [f"--{k}={v}" for k, v in set_.items() if v is not None]
    try:
        return load_config(config, [*_overrides(ctx), *extra])
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore"):  # Prefect's API client logs every request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """E-commerce recommendation pipeline."""
    _setup_logging(verbose)


@app.command()
def generate(
    data: Annotated[Path, typer.Option(help="Folder to write the data set into.")] = Path("data/synthetic"),
    preset: Annotated[
        str, typer.Option(help="small (CI), medium (~1M events) or large (~20M events).")
    ] = "small",
    users: Annotated[int | None, typer.Option(help="Override the preset's number of users.")] = None,
    items: Annotated[int | None, typer.Option(help="Override the preset's number of items.")] = None,
    days: Annotated[int | None, typer.Option(help="Override the preset's number of days.")] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Generate a synthetic e-commerce data set in the input contract (docs/synthetic-data.md)."""
    from dataclasses import replace

    from pipelines.synthetic import PRESETS
    from pipelines.synthetic import generate as run_generate

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    changes = {"users": users, "items": items, "days": days, "seed": seed}
    changes = {k: v for k, v in changes.items() if v is not None}
    if start is not None:
        changes["start"] = parse_date(start)
    spec = replace(spec, **changes)
    summary = run_generate(data, spec)
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo(f"data set written to {data}")


@app.command(name="import", context_settings=_OVERRIDES)
def import_(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="amazon | myntra | obd | taobao")],
    src: Annotated[Path, typer.Option(help="Folder of the public data set (taobao: or the csv file).")],
    data: Annotated[Path, typer.Option(help="Folder to write the converted data set into.")],
    tz: Annotated[
        str | None,
        typer.Option(
            help="taobao: time zone of the day partitions, e.g. Asia/Shanghai; ts then holds local "
            "wall-clock time labelled UTC (default UTC: ts is the instant)."
        ),
    ] = None,
    first_day: Annotated[
        str | None, typer.Option(help="taobao: drop rows before this day (YYYY-MM-DD, in --tz).")
    ] = None,
    last_day: Annotated[
        str | None, typer.Option(help="taobao: drop rows after this day (YYYY-MM-DD, in --tz).")
    ] = None,
) -> None:
    """Convert a public data set layout into the input contract (docs/real-data.md)."""
    import inspect

    from pipelines.adapters import IMPORTERS

    if ctx.args:
        raise typer.BadParameter(f"unexpected arguments {ctx.args}; see `recsys import --help`")
    if kind not in IMPORTERS:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose one of {sorted(IMPORTERS)}")
    importer = IMPORTERS[kind]
    options = {
        "tz": tz,
        "first_day": parse_date(first_day) if first_day else None,
        "last_day": parse_date(last_day) if last_day else None,
    }
    options = {k: v for k, v in options.items() if v is not None}
    unknown = [f"--{k.replace('_', '-')}" for k in options if k not in inspect.signature(importer).parameters]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)} does not apply to {kind!r}; drop it")
    summary = importer(src, data, **options)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command(context_settings=_OVERRIDES)
def validate(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Input folder (default: data.dir of the config).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check a data set against the contract; one line per problem; exit 1 when there is any error."""
    from pipelines.validation import validate_data

    cfg = _config(config, ctx, **{"data.dir": data})
    report = validate_data(cfg.data.dir, cfg.columns)
    for p in report.problems:
        typer.echo(p.line(), err=p.level == "error")
    typer.echo("# columns section in use (inferred where the config declares none):")
    typer.echo(yaml.safe_dump({"columns": report.inferred.model_dump()}, sort_keys=False).rstrip())
    n_err, n_warn = len(report.errors), len(report.warnings)
    typer.echo(f"{cfg.data.dir}: {'OK' if report.ok else 'INVALID'} ({n_err} errors, {n_warn} warnings)")
    if not report.ok:
        raise typer.Exit(1)


RunnerOpt = Annotated[str | None, typer.Option(help="Task runner: local or dask (overrides runtime.runner).")]
DaskOpt = Annotated[
    str | None, typer.Option(help="tcp://host:8786 of a Dask scheduler (overrides runtime.dask_address).")
]


def _with_paths(ctx: typer.Context, **set_: Any) -> list[str]:
    """The command's overrides plus those of its explicit options (e.g. --data -> --data.dir=...)."""
    return _overrides(ctx) + [f"--{k}={v}" for k, v in set_.items() if v is not None]


def _run_nightly(
    run_date: date, config: Path | None, overrides: list[str], force: bool = False
) -> dict[str, Any]:
    from flows.nightly import flow_for

    cfg = load_config(config, overrides)
    state = flow_for(cfg.runtime)(
        date=run_date.isoformat(),
        config_path=str(config) if config else None,
        overrides=overrides,
        force=force,
        return_state=True,
    )
    typer.echo(f"flow run final state: {state.type.value} ({state.name})")
    if not state.is_completed():
        try:
            state.result()
        except Exception as err:  # noqa: BLE001  (the flow's own error, printed for the user)
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    return state.result()


@app.command(context_settings=_OVERRIDES)
def nightly(
    ctx: typer.Context,
    date_: Annotated[str, typer.Option("--date", help="Run date D, YYYY-MM-DD.")],
    data: Annotated[Path | None, typer.Option(help="Input folder (overrides data.dir).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (overrides data.out).")] = None,
    runner: RunnerOpt = None,
    dask_address: DaskOpt = None,
    force: Annotated[
        bool, typer.Option(help="Rerun every stage even when its cached result is valid.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the nightly Prefect flow for one day (resumes: stages whose outputs are intact are not rerun)."""
    run_date = parse_date(date_)
    paths = {
        "data.dir": data,
        "data.out": out,
        "runtime.runner": runner,
        "runtime.dask_address": dask_address,
    }
    overrides = _with_paths(ctx, **paths)
    _config(config, ctx, **paths)  # fail fast on a bad config
    summary = _run_nightly(run_date, config, overrides, force)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command(context_settings=_OVERRIDES)
def demo(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo writes data/ and out/.")] = Path(
        "demo"
    ),
    preset: Annotated[str, typer.Option(help="Synthetic preset.")] = "small",
    users: Annotated[int | None, typer.Option(help="Override the preset's number of users.")] = None,
    items: Annotated[int | None, typer.Option(help="Override the preset's number of items.")] = None,
    days: Annotated[int | None, typer.Option(help="Override the preset's number of days.")] = None,
) -> None:
    """Generate synthetic data and run the nightly flow for one day; print where everything is.

    Extra --section.key=value overrides go to the flow (e.g. --ranker.epochs=1 for a quicker demo).
    """
    from dataclasses import replace

    from pipelines import io
    from pipelines.synthetic import PRESETS
    from pipelines.synthetic import generate as run_generate

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data, out = folder / "data", folder / "out"
    changes = {k: v for k, v in {"users": users, "items": items, "days": days}.items() if v is not None}
    spec = replace(PRESETS[preset], **changes)
    overrides = [*_overrides(ctx), f"--data.dir={data}", f"--data.out={out}"]
    _config(None, ctx, **{"data.dir": data, "data.out": out})
    typer.echo(f"== generating the synthetic '{preset}' data set into {data}")
    run_generate(data, spec)
    dates = io.event_dates(data)
    run_date = dates[-2] if len(dates) > 1 else dates[-1]  # leave D+1 for evaluation
    typer.echo(
        f"== running the nightly flow for {run_date} (Prefect, ephemeral server unless PREFECT_API_URL)"
    )
    summary = _run_nightly(run_date, None, overrides)
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo("== outputs")
    for ds in sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        part = io.partition_dir(out, ds, run_date)
        if part.is_dir():
            typer.echo(f"  {ds:<12} {part}")
    typer.echo("== where to look")
    typer.echo(f"  candidates   {io.partition_dir(out, 'candidates', run_date) / 'part-0.parquet'}")
    typer.echo(f"  scores       {io.partition_dir(out, 'scores', run_date) / 'part-0.parquet'}")
    typer.echo(f"  report       {summary['report']}")


@app.command(context_settings=_OVERRIDES)
def backfill(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last date, YYYY-MM-DD (inclusive).")],
    independent: Annotated[
        bool, typer.Option(help="Days do not chain warm starts: run in parallel.")
    ] = False,
    max_concurrency: Annotated[int, typer.Option(help="Parallel days with --independent.")] = 2,
    force: Annotated[bool, typer.Option(help="Rerun days already complete with the same config.")] = False,
    data: Annotated[Path | None, typer.Option(help="Input folder (overrides data.dir).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (overrides data.out).")] = None,
    runner: RunnerOpt = None,
    dask_address: DaskOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the nightly flow for every date in [start, end] as subflows; print completed, skipped, failed."""
    from flows.backfill import backfill as backfill_flow

    paths = {
        "data.dir": data,
        "data.out": out,
        "runtime.runner": runner,
        "runtime.dask_address": dask_address,
    }
    overrides = _with_paths(ctx, **paths)
    _config(config, ctx, **paths)
    state = backfill_flow(
        start=start,
        end=end,
        config_path=str(config) if config else None,
        overrides=overrides,
        independent=independent,
        force=force,
        max_concurrency=max_concurrency,
        return_state=True,
    )
    typer.echo(f"flow run final state: {state.type.value} ({state.name})")
    if not state.is_completed():
        raise typer.Exit(1)
    summary = state.result()
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary["failed"]:
        raise typer.Exit(1)


@app.command(context_settings=_OVERRIDES)
def report(
    ctx: typer.Context,
    date_: Annotated[str, typer.Option("--date", help="Report date, YYYY-MM-DD.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (overrides data.out).")] = None,
    trend_days: Annotated[int, typer.Option(help="Dates shown in the trend plot.")] = 30,
    config: ConfigOpt = None,
) -> None:
    """(Re)build the evaluation report of a date from the committed outputs: reports/dt=D/report.html."""
    from pipelines.report import write_report

    cfg = _config(config, ctx, **{"data.out": out})
    result = write_report(cfg.data.out, parse_date(date_), trend_days=trend_days)
    typer.echo(json.dumps(result["headline"], indent=2))
    typer.echo(f"report: {result['html']}")
    typer.echo(f"metrics: {result['metrics_path']}")


@app.command(context_settings=_OVERRIDES)
def serve(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Register the nightly (cron: runtime.cron) and backfill deployments and serve them until interrupted.

    Point PREFECT_API_URL at a running Prefect server (`prefect server start`) to see runs in its UI.
    """
    from flows.deployments import serve_all

    serve_all(_config(config, ctx), config, _overrides(ctx))


@app.command(name="config", context_settings=_OVERRIDES)
def show_config(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Print the resolved config (defaults + file + overrides) as YAML."""
    typer.echo(config_to_yaml(_config(config, ctx)).rstrip())


def _main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
