"""The validation stage: find the input files through `pipelines.io`, check them with `features.contract`.

Validation only reads; it never modifies the inputs. The CLI prints `report.lines()` and, for
`columns_yaml(report.inferred)`, the attribute columns it resolved, ready to paste into a config file.
"""

from __future__ import annotations

import logging
from datetime import date
from functools import partial
from pathlib import Path

import yaml

from features.config import ColumnsConfig
from features.contract import Problem, ValidationReport, validate_inputs
from pipelines import io

log = logging.getLogger(__name__)


class InputValidationError(ValueError):
    """The inputs break the contract; the message holds one line per error."""


def validate_data(
    data_dir: Path,
    columns: ColumnsConfig,
    *,
    max_image_bytes: int = io.MAX_INPUT_FILE_BYTES,
    run_date: date | None = None,
) -> ValidationReport:
    """Validate the input data set at `data_dir` (layout in docs/data-contract.md) against the contract.

    `columns` is the `columns:` section of the config; lists left None are inferred and returned in
    `report.inferred`. Image paths are checked with the rules of `io.input_path_rejections` (files over
    `max_image_bytes`, embeddings.max_image_bytes, are not read). `run_date`, when given, must have events.
    Callers print `report.lines()` themselves; this logs a summary at INFO and each problem at DEBUG, so
    that the lines are not printed twice.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():  # one line, not one per missing file
        what = "is not a folder" if data_dir.exists() else "does not exist"
        problem = Problem(
            "error",
            str(data_dir),
            None,
            f"the data folder {what}",
            "pass --data (or data.dir) an input folder",
        )
        return ValidationReport((problem,), columns, {})
    report = validate_inputs(
        users_file=io.users_path(data_dir),
        items_file=io.items_path(data_dir),
        event_files=io.event_files(data_dir),
        data_root=data_dir,
        columns=columns,
        stray_event_dirs=io.stray_event_dirs(data_dir),
        events_dir=io.events_root(data_dir),
        image_check=partial(io.input_path_rejections, data_dir, max_bytes=max_image_bytes),
        run_date=run_date,
    )
    log.info("validated %s: %d errors, %d warnings", data_dir, len(report.errors), len(report.warnings))
    for line in report.lines():
        log.debug("%s", line)
    return report


def require_valid(
    data_dir: Path,
    columns: ColumnsConfig,
    *,
    max_image_bytes: int = io.MAX_INPUT_FILE_BYTES,
    run_date: date | None = None,
) -> ValidationReport:
    """`validate_data`, raising `InputValidationError` (all error lines) when there is any error."""
    report = validate_data(data_dir, columns, max_image_bytes=max_image_bytes, run_date=run_date)
    if not report.ok:
        raise InputValidationError(
            f"{len(report.errors)} errors in the inputs at {data_dir}:\n"
            + "\n".join(p.line() for p in report.errors)
        )
    return report


def columns_yaml(columns: ColumnsConfig) -> str:
    """The `columns:` section of a config file as YAML.

    >>> print(columns_yaml(ColumnsConfig(user_categorical=["gender"], user_numeric=[])), end="")
    columns:
      user_categorical:
      - gender
      user_numeric: []
      item_categorical: null
      item_numeric: null
    """
    return yaml.safe_dump({"columns": columns.model_dump()}, sort_keys=False)
