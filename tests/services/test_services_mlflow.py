"""README "Scaling out", a shared MLflow tracking server: every stage logs through HTTP to a real
`mlflow server` (backend store in PostgreSQL, artifacts proxied by the server into a folder).

The lineage answers are the local store's: the tests of tests/test_lineage.py are imported and
run again here against the server, on a tiny pipeline (train, finetune registering `isdm-sdm`,
sample from `models:/isdm-sdm/latest`, curate, evaluate) run in this process over HTTP. Then
the README's queries (runs of one pipeline id), a checkpoint downloaded from the server by
version, and a server that goes away in the middle of a run.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml
from click.testing import CliRunner
from servers import BIN, Link, isdm_env, write_config
from test_lineage import (  # noqa: F401  (collected here: the same checks on the server)
    PARAMS,
    test_evaluate_logs_the_generator_of_its_synthetic_set,
    test_finetune_is_registered_and_samples_through_models_uri,
    test_generator_record_in_the_synthetic_folder,
    test_runs_log_their_datasets_with_dvc_hashes,
    test_search_by_sample_s_finds_the_sample_run_with_its_gain,
    test_unknown_model_version_is_a_clear_error,
)

from isdm.cli import cli

pytestmark = pytest.mark.slow

EXPERIMENT = "isdm-services-lineage"


def _isdm(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(synth_dir, tmp_path_factory, mlflow_server):
    """test_lineage's pipeline (plus curate) once, logged to the MLflow server over HTTP."""
    import mlflow

    root = tmp_path_factory.mktemp("lineage-http")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        **PARAMS, "curate": {"min_fidelity": 0.0, "pixel_threshold": 1.5},
        "tracking": {"experiment": EXPERIMENT}}))
    pipeline_id = f"services-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        mp.setenv("ISDM_CACHE", str(root / "cache"))
        mp.setenv("ISDM_PIPELINE_ID", pipeline_id)
        mp.chdir(root)
        c, d = ["-c", str(params)], ["--data", str(synth_dir)]
        _isdm("train", *c, *d, "--out", "sdm")
        _isdm("finetune", *c, *d, "--init", "sdm/best.pt", "--out", "sdm_ft")
        _isdm("sample", *c, *d, "--checkpoint", "models:/isdm-sdm/latest", "--out", "syn",
              "--device", "cpu", "--set", "sample.s=3.0")
        _isdm("curate", *c, *d, "--synthetic", "syn", "--out", "cur", "--cell-cache", "cc",
              "--device", "cpu")
        _isdm("evaluate", *c, *d, "--synthetic", "syn", "--out", "eval")
        # README: the runs of one pipeline execution
        runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                                  filter_string=f"tags.isdm.pipeline = '{pipeline_id}'")
        by_action: dict[str, list] = {}
        for run in runs:
            by_action.setdefault(run.data.tags["isdm.action"], []).append(run)
        yield root, by_action


def test_every_stage_logged_one_run_over_http_with_its_artifacts(pipeline, mlflow_server):
    import mlflow

    root, runs = pipeline
    assert {"train", "finetune", "sample", "curate", "evaluate"} <= set(runs)
    for action in ("train", "finetune", "sample", "curate", "evaluate"):
        (run,) = runs[action]
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    client = mlflow.MlflowClient(mlflow_server.url)
    names = {a.path for a in client.list_artifacts(runs["train"][0].info.run_id)}
    assert "config.json" in names  # uploaded through HTTP into the server's folder
    (curate,) = runs["curate"]  # the generator of the set it filtered, not params.yaml's s=2.0
    assert curate.data.params["curate.pixel_threshold"] == "1.5"
    assert curate.data.params["sample.s"] == "3.0" and "train.lr" not in curate.data.params
    assert curate.data.tags["isdm.sample_run_id"] == runs["sample"][0].info.run_id


def test_sampling_from_a_registered_version_over_http_gives_the_local_checkpoints_bytes(
        pipeline, synth_dir, monkeypatch):
    root, runs = pipeline
    version = runs["finetune"][0].data.tags["isdm.model_version"].split("/")[1]
    monkeypatch.setenv("ISDM_CACHE", str(root / "fresh-cache"))  # download it again
    c, d = ["-c", str(root / "params.yaml")], ["--data", str(synth_dir)]
    off = ["--device", "cpu", "--set", "sample.s=3.0", "--set", "tracking.enabled=false"]
    # the version's checkpoint comes from the server (MLFLOW_TRACKING_URI) even without a run
    _isdm("sample", *c, *d, "--checkpoint", f"models:/isdm-sdm/{version}", "--out",
          str(root / "syn_v"), *off)
    _isdm("sample", *c, *d, "--checkpoint", str(root / "sdm_ft" / "best.pt"), "--out",
          str(root / "syn_local"), *off)
    for sub in ("samples", "labels"):
        local = sorted((root / "syn_local" / sub).iterdir())
        assert len(local) == 4
        for path in local:
            for other in ("syn_v", "syn"):
                assert (root / other / sub / path.name).read_bytes() == path.read_bytes()
    assert len(list((root / "fresh-cache").rglob("best.pt"))) == 1


def test_a_server_gone_mid_run_fails_clearly_and_keeps_the_files(tmp_path, synth_dir,
                                                                 mlflow_server):
    """The link to the server is cut while `isdm train` runs (what a client sees when the
    server dies): the command ends with one clear error, its checkpoints stay loadable, and
    the next run on this host marks the orphaned run KILLED."""
    import mlflow

    from isdm.config import TrackingConfig
    from isdm.tracking import start_run
    from isdm.training.checkpoint import load

    link = Link(int(mlflow_server.url.rsplit(":", 1)[1]))
    uri = f"http://127.0.0.1:{link.port}"
    config = write_config(tmp_path / "params.yaml",
                          train={"max_epochs": 500, "patience": 0, "log_every": 1},
                          tracking={"experiment": "isdm-services-down"})
    out = tmp_path / "sdm"
    env = isdm_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                   MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")  # the user's own, shorter waits
    proc = subprocess.Popen([str(BIN / "isdm"), "train", "-c", str(config), "--data",
                             str(synth_dir), "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    link.cut()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert f"MLflow tracking server {uri} stopped answering during this command" in err
    assert "Traceback" not in err and "--resume" in err
    for name in ("last.pt", "best.pt"):
        assert load(out / name)["step"] >= 2  # intact: loads and verifies its digest
    client = mlflow.MlflowClient(mlflow_server.url)
    (orphan,) = client.search_runs(
        [client.get_experiment_by_name("isdm-services-down").experiment_id])
    assert orphan.info.status == "RUNNING"
    with start_run(TrackingConfig(tracking_uri=mlflow_server.url,
                                  experiment="isdm-services-down"), name="next", action="train"):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
