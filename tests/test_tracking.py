"""The MLflow wrapper: runs land in the given store, params use dotted keys, nesting works."""

from __future__ import annotations

import dataclasses

import pytest

from isdm import tracking
from isdm.config import Config, TrackingConfig, flatten


def test_disabled_tracking_is_a_null_run():
    with tracking.start_run(TrackingConfig(enabled=False), name="x", action="train") as run:
        run.log_metrics({"loss": 1.0})
        assert run.run_id is None


def test_run_params_metrics_and_child(mlflow_uri, tmp_path):
    import mlflow

    cfg = Config()
    with tracking.start_run(cfg.tracking, name="parent", action="evaluate",
                            dataset="data/synth", params=flatten(cfg)) as parent:
        parent.log_metrics({"miou": 0.5}, step=0)
        with tracking.start_run(cfg.tracking, name="child", action="cell") as child:
            child.log_metrics({"miou": 0.25})
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    p = client.get_run(parent.run_id)
    c = client.get_run(child.run_id)
    assert p.data.params["train.lr"] == str(cfg.train.lr)
    assert p.data.params["evaluate.architectures"] == "UnetPlusPlus,FPN,DeepLabV3Plus"
    assert p.data.metrics["miou"] == 0.5
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert p.data.tags["isdm.action"] == "evaluate"
    exp = client.get_experiment(p.info.experiment_id)
    assert exp.name == "isdm-synth"


@pytest.mark.parametrize("on, expected", [(True, True), (False, None)])
def test_the_system_metrics_switch_reaches_mlflow_start_run(mlflow_uri, monkeypatch, on, expected):
    import mlflow

    seen, start = [], mlflow.start_run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("log_system_metrics"))
        return start(*args, **{**kwargs, "log_system_metrics": False})  # sample nothing

    monkeypatch.setattr(mlflow, "start_run", spy)
    with tracking.start_run(TrackingConfig(system_metrics=on), name="x", action="sample"):
        pass
    assert seen == [expected]  # off: MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING decides


def test_the_system_metrics_switch_is_an_environment_variable():
    from isdm.config import resolve

    assert resolve(env={"ISDM_SYSTEM_METRICS": "true"}).config.tracking.system_metrics
    assert not resolve(env={}).config.tracking.system_metrics


def test_run_names_round_floats():
    from isdm.training.loop import run_name

    assert tracking.short(2.7440675196366238) == "2.744"
    assert (tracking.short(0.2), tracking.short(2.0), tracking.short(1e-05)) == ("0.2", "2", "1e-05")
    assert tracking.short(20) == "20"
    ft = dataclasses.replace(Config().finetune, drop_rate=0.23456789)
    assert run_name(Config(), "finetune", ft).endswith(" drop=0.2346")


def test_failed_run_is_marked_failed(mlflow_uri):
    import mlflow
    import pytest

    with pytest.raises(RuntimeError):
        with tracking.start_run(TrackingConfig(), name="boom", action="train") as run:
            raise RuntimeError("x")
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"


# ---- grouping and status of interrupted runs (issue 13 item 5) -------------------------------
_ENV_DROP = ("ISDM_PIPELINE_ID", "DVC_EXP_NAME", "DVC_STAGE", "DVC_ROOT", "MLFLOW_RUN_ID",
             "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def _child_env(**extra: str) -> dict:
    import os
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    src = str(Path(tracking.__file__).parents[2])  # the isdm sources under test
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def _ids(**env: str) -> list[str]:
    import subprocess
    import sys

    code = "from isdm.tracking import pipeline_id as p; print(p(), p())"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(**env), check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    return out


def test_standalone_commands_get_their_own_pipeline_id(tmp_path):
    first, second = _ids(), _ids()
    assert first[0] == first[1] and second[0] == second[1]  # one id per process
    assert first[0] != second[0]  # a fresh one per invocation
    assert _ids(ISDM_PIPELINE_ID="study-7") == ["study-7"] * 2
    assert _ids(DVC_EXP_NAME="drop03") == ["drop03"] * 2
    (tmp_path / "params.yaml").write_text("sample: {s: 1.5}\n")
    repro = dict(DVC_ROOT=str(tmp_path), DVC_STAGE="sample")
    a, b = _ids(**repro), _ids(**{**repro, "DVC_STAGE": "evaluate"})
    assert a == b and "-p" in a[0]  # every stage of one `dvc repro` shares it
    (tmp_path / "params.yaml").write_text("sample: {s: 3.0}\n")
    assert _ids(**repro) != a


# a process started from a shell: default signal handling, whatever this test process inherited
_VICTIM = """
import signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from isdm import tracking
from isdm.config import TrackingConfig
with tracking.start_run(TrackingConfig(), name="victim", action="train") as run:
    print(run.run_id, flush=True)
    time.sleep(120)
"""


def _victim(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _VICTIM], env=_child_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    return proc, run_id


@pytest.mark.slow
@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", None)])
def test_a_stopped_run_ends_killed(mlflow_uri, tmp_path, signame, code):
    import signal

    import mlflow

    proc, run_id = _victim(tmp_path)
    proc.send_signal(getattr(signal, signame))
    returncode = proc.wait(timeout=120)
    assert code is None or returncode == code, proc.stderr.read()
    assert mlflow.MlflowClient(mlflow_uri).get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_a_sigkilled_run_is_marked_killed_by_the_next_run(mlflow_uri, tmp_path):
    import os
    import signal

    import mlflow

    from isdm.tracking import liveness

    proc, run_id = _victim(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    exp = client.get_run(run_id).info.experiment_id
    # a run of a live process on this host, and one of another host: both stay RUNNING
    live = client.create_run(exp, tags={liveness.HOST_TAG: liveness._HOST,
                                        liveness.PID_TAG: str(os.getppid())}).info.run_id
    other = client.create_run(exp, tags={liveness.HOST_TAG: "elsewhere",
                                         liveness.PID_TAG: "1"}).info.run_id
    with tracking.start_run(TrackingConfig(), name="next", action="train"):
        pass
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and "SIGKILL" in killed.data.tags["isdm.ended_by"]
    assert {client.get_run(r).info.status for r in (live, other)} == {"RUNNING"}
