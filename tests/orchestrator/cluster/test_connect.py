"""Where Ray runs (orchestrator/cluster/connect.py): Ray started in this process when no
cluster is named, and trial sizes no node can give refused up front. One local Ray for
the whole file."""

from __future__ import annotations

import re

import pytest
import ray
from ray._private.worker import get_dashboard_url

from orchestrator.cluster.connect import check_resources, connect
from searchspaces import SpecError


@pytest.fixture(scope="module")
def local_ray():
    """Ray as connect() starts it with no address (RAY_ADDRESS unset); shut down at the end."""
    if ray.is_initialized():  # left over by an earlier file: start from none
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        connect()
        try:
            yield ray.get_runtime_context()
        finally:
            ray.shutdown()


def test_connect_starts_a_local_ray_without_dashboard_and_a_second_call_keeps_it(local_ray):
    assert ray.is_initialized()
    assert get_dashboard_url() == ""  # dashboard off
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    job, gcs = local_ray.get_job_id(), local_ray.gcs_address
    connect(address="127.0.0.1:1")  # nothing listens there: joining it would fail
    assert ray.is_initialized()
    context = ray.get_runtime_context()
    assert (context.get_job_id(), context.gcs_address) == (job, gcs)


@pytest.mark.parametrize("cpu, gpu", [(1, 0), (0.5, 0), (0, 0)])
def test_a_trial_size_a_node_can_give_passes(local_ray, cpu, gpu):
    assert check_resources(cpu, gpu, "s.yaml") is None


@pytest.mark.parametrize("cpu, gpu", [(999, 0), (1, 1)])
def test_a_trial_size_no_node_can_give_is_refused_naming_the_largest_node(local_ray, cpu,
                                                                           gpu):
    cpus = ray.cluster_resources()["CPU"]  # one node: the largest has them all
    message = (f"s.yaml: key 'resources': each trial asks for cpu: {cpu}, gpu: {gpu}, but no "
               f"node of the cluster has that much (1 node(s); the largest has {cpus:g} CPU "
               "and 0 GPU)")
    with pytest.raises(SpecError, match=f"^{re.escape(message)}") as caught:
        check_resources(cpu, gpu, "s.yaml")
    assert (caught.value.source, caught.value.where) == ("s.yaml", "key 'resources'")


@pytest.mark.parametrize(("address", "env", "client"), [
    ("ray://head:10001", None, True), (None, "ray://head:10001", True),
    ("head:6379", None, False), (None, "http://head:8265", False), (None, None, False)])
def test_a_ray_client_address_is_told_apart(monkeypatch, address, env, client):
    from orchestrator.cluster.connect import client_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert client_address(address) is client


def test_sweep_and_retune_refuse_a_ray_client_address(tmp_path):
    """Through ray://, Tune runs the sweep's driver loop on the head, which writes the
    event log and summary to its own disk: refused before anything starts (exit 2)."""
    import yaml
    from conftest import assert_one_paragraph_error, caviar, sweep_dict

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict()))
    done = caviar("sweep", sweep, "--workdir", tmp_path / "w", "--address", "ray://127.0.0.1:9")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "Ray Client address (ray://)", "caviar submit")
    assert not (tmp_path / "w").exists()
    retune = tmp_path / "retune.yaml"
    retune.write_text(yaml.safe_dump({"model": "m", "sweep": "sweep.yaml"}))
    done = caviar("retune", retune, "--workdir", tmp_path / "w", "--address", "ray://h:1")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "--address / RAY_ADDRESS", "--dry-run may")
