"""The registered MLflow model ``isdm-sdm`` (code: ``isdm/serving/sdm_pyfunc.py``): logged by
:func:`isdm.tracking.registry.register_sdm`, loaded back by MLflow, it samples the bytes of
isdm's own engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from isdm.tracking.registry import MODEL_CODE


def test_the_model_code_is_the_serving_module():
    import isdm.serving

    assert MODEL_CODE.is_file() and MODEL_CODE.parent.name == "serving"
    assert MODEL_CODE.parent == Path(isdm.serving.__file__).parent
    assert "set_model(SDMModel())" in MODEL_CODE.read_text()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Add type hints to the `predict`")  # the signature is given
def test_a_registered_model_loads_and_samples_the_engines_bytes(tiny_checkpoint, tmp_path,
                                                                 mlflow_uri):
    import mlflow

    from isdm.config import save_config
    from isdm.sampling.engine import load_engine
    from isdm.sampling.plan import sample_seed
    from isdm.tracking.registry import MODEL_NAME, register_sdm
    from isdm.training.checkpoint import load_model

    _, cfg, _ = load_model(tiny_checkpoint)
    cfg = cfg.replace(sample=dataclasses.replace(cfg.sample, sampler="ddim", steps=2, s=1.0,
                                                 seed=3))
    config_json = tmp_path / "config.json"
    save_config(cfg, config_json)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("serving")  # not an experiment id an earlier test left active
    with mlflow.start_run():
        version = register_sdm(tiny_checkpoint, config_json, cfg)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    labels = np.zeros((2, 32, 32), dtype=np.uint8)
    labels[:, 8:24, 8:24] = 1
    got = model.predict(labels, params={"steps": 2, "seed": 3})
    engine = load_engine(cfg, tiny_checkpoint, "cpu")[0]
    want = engine(labels, [sample_seed(3, b) for b in range(2)])
    assert got.shape == (2, 32, 32, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want)
