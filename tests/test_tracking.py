"""The MLflow wrapper: runs land in the given store, params use dotted keys, nesting works."""

from __future__ import annotations

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


def test_failed_run_is_marked_failed(mlflow_uri):
    import mlflow
    import pytest

    with pytest.raises(RuntimeError):
        with tracking.start_run(TrackingConfig(), name="boom", action="train") as run:
            raise RuntimeError("x")
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"
