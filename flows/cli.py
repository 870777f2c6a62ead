"""The `recsys` command line.

Commands that take a config accept `--config FILE` and any number of `--section.key=value` overrides, e.g.
`recsys nightly --date 2024-03-10 --ranker.experts=8 --data.out=/tmp/out`.

Failures are reported as one line per problem on stderr (`error: <file>: column <c>: ...; fix: ...`), never
as a traceback unless `--verbose`. Exit status: 0 done, 1 the inputs are invalid or the run failed,
2 a usage error (option, date, range, config), 75 another run of the same date holds the output folder.
`nightly` and `backfill` check what they can before any Prefect server starts or anything is written:
the config, the dates, that the output folder is writable and not locked, and the inputs.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from typer.core import TyperGroup

from pipelines.config import Config, ConfigError, config_to_yaml, load_config, parse_date

EXIT_INVALID = 1  # invalid inputs, or a run that failed
EXIT_USAGE = 2  # an option, date, range or config that cannot be used (click's own code for usage errors)
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run of the same date holds the output folder; try again later


class UsageProblem(ValueError):
    """A command line that cannot run (e.g. a backfill range that ends before it starts); exit 2."""


def _exit_code(err: BaseException) -> int:
    from pipelines.lock import RunLockedError

    if isinstance(err, RunLockedError):
        return EXIT_LOCKED
    if isinstance(err, ConfigError | UsageProblem):
        return EXIT_USAGE
    return EXIT_INVALID


class OneLineErrors(TyperGroup):
    """Reports every failure of a command as one line per problem on stderr, with its exit status; the
    traceback only with --verbose."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as err:  # click's: an option missing, unknown or of the wrong form
            sub = getattr(err, "ctx", None)
            where = sub.command_path if sub is not None else ctx.command_path
            line = f"error: {where}: {err.format_message().rstrip('.')}"
            if "fix:" not in line:
                line += f"; fix: see `{where} --help`"
            typer.echo(line, err=True)
            raise typer.Exit(getattr(err, "exit_code", EXIT_USAGE)) from None
        except Exception as err:
            from pipelines.errors import failure_lines

            if ctx.params.get("verbose"):
                typer.echo("".join(traceback.format_exception(err)).rstrip(), err=True)
            for line in failure_lines(err):
                typer.echo(line, err=True)
            raise typer.Exit(_exit_code(err)) from None


app = typer.Typer(
    name="recsys",
    help="E-commerce recommendation pipeline: synthetic data, validation, nightly Prefect flows, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
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


def _config(config: Path | None, ctx: typer.Context, **set_: Any) -> Config:
    """The resolved config (ConfigError, one line per problem, exit 2, when it does not fit)."""
    extra = [f"--{k}={v}" for k, v in set_.items() if v is not None]
    return load_config(config, [*_overrides(ctx), *extra])


def _date(text: str, option: str) -> date:
    """An option's YYYY-MM-DD value; a one-line usage error naming the option otherwise."""
    try:
        return parse_date(text)
    except ConfigError as err:
        raise ConfigError(f"{option}: {err}") from None


class ConsoleFormatter(logging.Formatter):
    """One line per record: without --verbose a record's traceback is left out (the command reports the
    error itself, once)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class QuietFailures(logging.Filter):
    """Without --verbose: Prefect's own reports of a failed task or flow (a traceback, "Finished in state
    Failed") are not shown; the command prints the error once, as one line with its fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in ("EventsWorker", "APILogWorker"):  # Prefect's senders draining at the end of a run
            return record.levelno >= logging.ERROR
        if not record.name.startswith("prefect"):
            return True
        return not (record.exc_info or str(record.msg).startswith("Finished in state Failed"))


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:  # a host application (or pytest) that configured logging keeps its handlers
        handler = logging.StreamHandler(sys.stderr)
        fmt, datefmt = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
        if verbose:
            handler.setFormatter(logging.Formatter(fmt, datefmt))
        else:
            handler.setFormatter(ConsoleFormatter(fmt, datefmt))
            handler.addFilter(QuietFailures())
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    noisy = ["httpx", "httpcore"]  # Prefect's API client logs every request at INFO
    if not verbose:
        noisy.append("faiss.loader")  # which CPU build of FAISS it tried, at INFO
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)


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
    content_signal: Annotated[
        float | None,
        typer.Option(help="Strength of the preferences only titles and images reveal; 0 plants none."),
    ] = None,
) -> None:
    """Generate a synthetic e-commerce data set in the input contract (docs/synthetic-data.md)."""
    from dataclasses import replace

    from pipelines.datasets.synthetic import PRESETS
    from pipelines.datasets.synthetic import generate as run_generate

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    changes = {"users": users, "items": items, "days": days, "seed": seed, "content_signal": content_signal}
    changes = {k: v for k, v in changes.items() if v is not None}
    if start is not None:
        changes["start"] = _date(start, "--start")
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

    from pipelines.datasets import IMPORTERS

    if ctx.args:
        raise typer.BadParameter(f"unexpected arguments {ctx.args}; see `recsys import --help`")
    if kind not in IMPORTERS:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose one of {sorted(IMPORTERS)}")
    importer = IMPORTERS[kind]
    options = {
        "tz": tz,
        "first_day": _date(first_day, "--first-day") if first_day else None,
        "last_day": _date(last_day, "--last-day") if last_day else None,
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
    report = validate_data(cfg.data.dir, cfg.columns, max_image_bytes=cfg.embeddings.max_image_bytes)
    for line in report.lines():
        typer.echo(line, err=True)
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


WaitOpt = Annotated[
    bool,
    typer.Option(
        help="When another run of the same date writes to the output folder, start when it ends "
        "(default: refuse at once, exit 75)."
    ),
]


def _check_output(out: Path, dates: list[date], wait: bool) -> None:
    """Before any server starts: the output folder can hold the lock files and no live run holds a date."""
    from pipelines import io
    from pipelines.lock import RunLockedError, held_by, locked_message, probe

    probe(out)  # OSError (read-only, not a folder, no permission): one line with its fix
    if wait:
        return
    for d in dates:
        holder = held_by(out, d)
        if holder is not None:
            raise RunLockedError(locked_message(io.lock_path(out, d), d, holder))


def _check_inputs(cfg: Config, run_date: date | None) -> None:
    """Validate the inputs (and that `run_date` has events); on errors stop before anything is written,
    reporting every problem (errors, then warnings). When there is no error the warnings are left to the
    flow's validate task, which logs them."""
    from pipelines.validation import InputValidationError, validate_data

    report = validate_data(
        cfg.data.dir, cfg.columns, max_image_bytes=cfg.embeddings.max_image_bytes, run_date=run_date
    )
    if not report.ok:
        raise InputValidationError("\n".join(report.lines()))


def _run_nightly(
    run_date: date, config: Path | None, overrides: list[str], force: bool = False, wait: bool = False
) -> dict[str, Any]:
    """The nightly flow for `run_date` against a temporary Prefect server (unless PREFECT_API_URL); its
    error, if it failed, is raised for the command to report."""
    from flows.nightly import flow_for
    from flows.server import temporary_server

    cfg = load_config(config, overrides)
    with temporary_server():
        state = flow_for(cfg.runtime)(
            date=run_date.isoformat(),
            config_path=str(config) if config else None,
            overrides=overrides,
            force=force,
            wait=wait,
            return_state=True,
        )
        summary = state.result()  # raises the flow's error when it failed
    typer.echo(f"flow run final state: {state.type.value} ({state.name})")
    return summary


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
    wait: WaitOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run the nightly Prefect flow for one day (resumes: stages whose outputs are intact are not rerun)."""
    run_date = _date(date_, "--date")
    paths = {
        "data.dir": data,
        "data.out": out,
        "runtime.runner": runner,
        "runtime.dask_address": dask_address,
    }
    overrides = _with_paths(ctx, **paths)
    cfg = _config(config, ctx, **paths)  # fail fast: config, output folder, lock, inputs
    _check_output(cfg.data.out, [run_date], wait)
    _check_inputs(cfg, run_date)
    summary = _run_nightly(run_date, config, overrides, force, wait)
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
    from pipelines.datasets.synthetic import PRESETS
    from pipelines.datasets.synthetic import generate as run_generate

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
    wait: WaitOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run the nightly flow for every date in [start, end] as subflows; print completed, skipped, failed.

    A day that fails (e.g. it has no events) does not stop the others; the exit status is then 1."""
    from flows.backfill import backfill as backfill_flow
    from flows.backfill import date_range
    from flows.server import temporary_server

    first, last = _date(start, "--start"), _date(end, "--end")
    try:
        days = date_range(first, last)
    except ValueError as err:
        raise UsageProblem(str(err)) from None
    paths = {
        "data.dir": data,
        "data.out": out,
        "runtime.runner": runner,
        "runtime.dask_address": dask_address,
    }
    overrides = _with_paths(ctx, **paths)
    cfg = _config(config, ctx, **paths)
    _check_output(cfg.data.out, days, wait)
    _check_inputs(cfg, None)  # the contract; a day without events fails alone, in its own run
    with temporary_server():
        state = backfill_flow(
            start=first.isoformat(),
            end=last.isoformat(),
            config_path=str(config) if config else None,
            overrides=overrides,
            independent=independent,
            force=force,
            max_concurrency=max_concurrency,
            wait=wait,
            return_state=True,
        )
        summary = state.result()  # raises the flow's error when it failed
    typer.echo(f"flow run final state: {state.type.value} ({state.name})")
    typer.echo(json.dumps(summary, indent=2, default=str))
    for failure in summary["failed"]:
        typer.echo(f"error: backfill day {failure['date']}: {failure['reason']}", err=True)
    if summary["failed"]:
        raise typer.Exit(EXIT_INVALID)


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
    result = write_report(cfg.data.out, _date(date_, "--date"), trend_days=trend_days)
    typer.echo(json.dumps(result["headline"], indent=2))
    typer.echo(f"report: {result['html']}")
    typer.echo(f"metrics: {result['metrics_path']}")


@app.command()
def search(
    out: Annotated[Path, typer.Option(help="Output folder of the nightly runs (data.out).")],
    text: Annotated[str | None, typer.Option(help="Text query, e.g. 'red summer dress'.")] = None,
    image: Annotated[Path | None, typer.Option(help="Image query: a JPEG or PNG file.")] = None,
    k: Annotated[int, typer.Option(help="Number of items to return.")] = 10,
    date_: Annotated[
        str | None, typer.Option("--date", help="Embeddings partition to search (default: the latest).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Input folder for titles (default: the one the partition recorded).")
    ] = None,
) -> None:
    """Nearest catalogue items to a text and/or image query, from the committed item embeddings (FAISS)."""
    from pipelines.search import search_items

    if not text and image is None:
        raise UsageProblem("search: no query; fix: pass --text and/or --image")
    if k < 1:
        raise UsageProblem(f"search: --k {k}; fix: pass --k 1 or more")
    dt = _date(date_, "--date") if date_ else None
    result = search_items(out, text=text, image=image, k=k, dt=dt, data_dir=data)
    if result.note:
        typer.echo(f"note: {result.note}", err=True)
    typer.echo(f"# embeddings/dt={result.dt}, {result.mode} search, top {result.table.height}")
    typer.echo(f"{'item_id':<14} {'score':>7}  {'title':<48} image_path")
    for row in result.table.iter_rows(named=True):
        title = (row["title"] or "")[:48]
        typer.echo(f"{row['item_id']:<14} {row['score']:>7.3f}  {title:<48} {row['image_path'] or ''}")


@app.command(context_settings=_OVERRIDES)
def serve(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Register the nightly (cron: runtime.cron) and backfill deployments and serve them until interrupted.

    Point PREFECT_API_URL at a running Prefect server (`prefect server start`) to see runs in its UI.
    """
    from flows.deployments import serve_all
    from flows.server import temporary_server

    cfg = _config(config, ctx)
    with temporary_server():
        serve_all(cfg, config, _overrides(ctx))


@app.command(name="config", context_settings=_OVERRIDES)
def show_config(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Print the resolved config (defaults + file + overrides) as YAML."""
    typer.echo(config_to_yaml(_config(config, ctx)).rstrip())


def _main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
