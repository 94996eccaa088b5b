"""``prefect.yaml`` names the flows the code submits to, on the ``glsim-gpu`` pool."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from flows.sweep import sweep
from flows.train_one import DEPLOYMENT, train_one

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def test_prefect_yaml_deploys_train_one_and_the_sweep_on_the_gpu_pool(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.setattr(sys, "path", list(sys.path))  # loading an entrypoint extends it

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    (pull,) = spec["pull"]
    assert "prefect.deployments.steps.set_working_directory" in pull
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"train-one", "sweep"}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"glsim-gpu"}
    root = PREFECT_YAML.parent
    flows = {
        name: load_flow_from_entrypoint(str(root / d["entrypoint"]))
        for name, d in deployments.items()
    }
    assert f"{flows['train-one'].name}/train-one" == DEPLOYMENT
    assert flows["train-one"].name == train_one.name and flows["sweep"].name == sweep.name
    assert deployments["sweep"]["parameters"]["use_deployments"] is True
