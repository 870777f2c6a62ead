from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, config_hash, config_to_yaml, load_config, parse_override


def test_defaults_load_and_are_frozen():
    cfg = load_config()
    assert cfg.retriever.temperature == 0.05
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen error type is internal)
        cfg.retriever.dim = 8  # type: ignore[misc]


def test_yaml_file_plus_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("ranker:\n  experts: 2\n  rank: 8\nfeatures:\n  crosses: [[age_bucket, brand]]\n")
    cfg = load_config(f, ["--ranker.experts=6", "data.train_window_days=3"])
    assert (cfg.ranker.experts, cfg.ranker.rank) == (6, 8)  # the override wins, the file value stays
    assert cfg.data.train_window_days == 3
    assert cfg.features.crosses == [("age_bucket", "brand")]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["--ranker.expertz=3"], "ranker.expertz: Extra inputs are not permitted; fix: remove it"),
        (["--bogus.key=1"], "bogus: Extra inputs are not permitted"),
        (["--retriever.temperature=0"], "retriever.temperature"),
        (["--index.nlist=4", "--index.nprobe=8"], "nprobe (8) must be <= index.nlist (4)"),
        (["--columns.user_categorical=[a]", "--columns.user_numeric=[a]"], "both list ['a']"),
    ],
)
def test_bad_config_names_key_and_fix(overrides: list[str], needle: str):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("sampling:\n  ratios: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert f"config file {f}: sampling.ratios" in str(err.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="no '='"):
        parse_override("--ranker.experts")
    with pytest.raises(ConfigError, match="names no section"):
        parse_override("--experts=3")


def test_hash_is_stable_and_sensitive():
    a, b = load_config(), load_config()
    assert config_hash(a) == config_hash(b)
    assert config_hash(load_config(overrides=["--runtime.seed=1"])) != config_hash(a)


def test_yaml_dump_round_trips(tmp_path: Path):
    cfg = load_config(overrides=["--ranker.gate=sigmoid"])
    f = tmp_path / "resolved.yaml"
    f.write_text(config_to_yaml(cfg))
    assert load_config(f) == cfg
