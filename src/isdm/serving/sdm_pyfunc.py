"""The MLflow model of a finetuned SDM (``mlflow.pyfunc``), logged as code by
:func:`isdm.tracking.registry.register_sdm`.

MLflow copies this file into the logged model and runs the copy when it loads the model
(``mlflow.pyfunc.load_model("models:/isdm-sdm/3")``), so it ends with ``set_model``; isdm itself
never imports it (a model logged while the file lived in ``isdm/tracking/`` loads the same way:
its copy imports only :mod:`isdm.config`, :mod:`isdm.sampling` and :mod:`isdm.utils`). The
model's artifacts are the isdm checkpoint (``checkpoint``) and the run's resolved config
(``config``).

``predict(labels, params)``: ``labels`` uint8 ``[B, H, W]`` class ids at the checkpoint's image
size; ``params`` ``s``, ``steps``, ``seed`` (defaults: the config's ``sample`` section) ->
uint8 ``[B, H, W, 3]`` images, row ``b`` drawn with seed ``sample_seed(seed, b)`` with the
config's sampler and spacing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class SDMModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from isdm.config import config_from_json

        self.cfg = config_from_json(Path(context.artifacts["config"]).read_text())
        self.checkpoint = context.artifacts["checkpoint"]
        self.engines: dict[tuple, Any] = {}

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them
        from isdm.sampling.engine import load_engine
        from isdm.sampling.plan import sample_seed
        from isdm.utils.runtime import resolve_device

        params = params or {}
        base = self.cfg.sample
        s, steps = float(params.get("s", base.s)), int(params.get("steps", base.steps))
        seed = int(params.get("seed", base.seed))
        labels = np.asarray(model_input, dtype=np.uint8)
        if (s, steps) not in self.engines:
            cfg = self.cfg.replace(sample=dataclasses.replace(base, s=s, steps=steps))
            self.engines[(s, steps)] = load_engine(cfg, self.checkpoint, resolve_device("auto"))[0]
        engine = self.engines[(s, steps)]
        return engine(labels, [sample_seed(seed, b) for b in range(len(labels))])


set_model(SDMModel())
