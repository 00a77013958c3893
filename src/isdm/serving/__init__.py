"""The finetuned SDM served by MLflow: :mod:`.sdm_pyfunc` is the ``mlflow.pyfunc`` model's code.

It sits above :mod:`isdm.sampling`, whose engine it calls. No isdm module imports it:
:func:`isdm.tracking.registry.register_sdm` logs the file as the model's code (MLflow "models
from code" copies it into the model) and MLflow runs that copy when it loads the model.
"""
