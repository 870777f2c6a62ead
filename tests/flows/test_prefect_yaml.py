"""prefect.yaml (the work-pool deployments) names real flows, their parameters, and the default schedule."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from pipelines.config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_match_the_flows():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"nightly", "backfill"}
    for name, dep in deployments.items():
        path, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}")
        assert flow.name == name
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep["parameters"]) <= accepted, (name, set(dep["parameters"]) - accepted)
        assert dep["work_pool"]["name"] == "recsys"
    nightly = deployments["nightly"]
    assert nightly["schedules"] == [{"cron": RuntimeConfig().cron, "timezone": RuntimeConfig().timezone}]
    assert nightly["concurrency_limit"] == 1
