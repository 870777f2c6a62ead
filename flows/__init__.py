"""Prefect flows, deployments and the `recsys` command line."""
