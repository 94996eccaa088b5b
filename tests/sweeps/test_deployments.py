"""``prefect.yaml`` names the flows the code submits to, on the ``glsim-gpu`` pool, and
``prefect deploy`` registers them with the nightly sweep paused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.integration
def test_prefect_deploy_registers_the_nightly_sweep_paused(prefect_harness, tmp_path):
    """``prefect deploy --all`` against a real server (the test harness's): the sweep's
    cron schedule is registered and inactive, and training runs wait for a held run folder."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    prefect = Path(sys.executable).with_name("prefect")
    if not prefect.is_file():
        pytest.skip(f"no prefect command beside {sys.executable}")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="glsim-gpu", type="process"), overwrite=True)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "GLSIM_REPO": str(PREFECT_YAML.parent),
    }
    out = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"], cwd=PREFECT_YAML.parent, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"

    with get_client(sync_client=True) as client:
        sweep_deployment = client.read_deployment_by_name("glsim-sweep/sweep")
        train_deployment = client.read_deployment_by_name(DEPLOYMENT)
    (nightly,) = sweep_deployment.schedules
    assert nightly.active is False
    assert nightly.schedule.cron == "0 2 * * *" and nightly.schedule.timezone == "UTC"
    assert train_deployment.schedules == []
    assert train_deployment.job_variables["env"]["GLSIM_CLAIM_WAIT_S"] == "3600"
