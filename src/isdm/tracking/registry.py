"""The finetuned SDM as the registered MLflow model ``isdm-sdm``, and ``models:/`` checkpoints.

:func:`register_sdm` logs the checkpoint as an ``mlflow.pyfunc`` model (the code in
:data:`MODEL_CODE`; artifacts ``checkpoint`` = ``best.pt`` and ``config`` =
``config.json``; signature: uint8 ``[-1, H, W]`` label ids in, uint8 ``[-1, H, W, 3]`` images
out, params ``s``, ``steps``, ``seed``) and registers it: one new version of ``isdm-sdm`` per
finetune. Its requirements are given (``isdm``), so MLflow infers no environment and needs no
network.

:func:`resolve_checkpoint` turns ``models:/isdm-sdm/3``, ``models:/isdm-sdm/latest`` or
``models:/isdm-sdm@champion`` into a local copy of that version's ``best.pt`` (cached under
``$ISDM_CACHE``, default ``~/.cache/isdm``), which ``isdm sample --checkpoint`` then uses.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from isdm.errors import CheckpointError

__all__ = ["MODEL_NAME", "register_sdm", "is_model_uri", "resolve_checkpoint"]

MODEL_NAME = "isdm-sdm"
#: The model's code (:mod:`isdm.serving.sdm_pyfunc`, above sampling, whose engine it calls): a
#: file MLflow copies into the model and runs when it loads it; named here, never imported.
MODEL_CODE = Path(__file__).resolve().parents[1] / "serving" / "sdm_pyfunc.py"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))$")


def register_sdm(checkpoint: str | Path, config_json: str | Path, cfg: Any) -> str:
    """Log ``checkpoint`` as the active run's model ``sdm`` and register it as ``isdm-sdm``;
    return the new version number. ``cfg`` is the run's :class:`isdm.config.Config`."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    size = cfg.data.image_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),
        params=ParamSchema([ParamSpec("s", "double", float(cfg.sample.s)),
                            ParamSpec("steps", "long", int(cfg.sample.steps)),
                            ParamSpec("seed", "long", int(cfg.sample.seed))]))
    with warnings.catch_warnings():  # an input example would run the sampler while logging;
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        warnings.filterwarnings("ignore", message=".*type hints to the `predict`")  # signature given
        info = mlflow.pyfunc.log_model(
            name="sdm", python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint), "config": str(config_json)},
            signature=signature, pip_requirements=["isdm"], registered_model_name=MODEL_NAME)
    return str(info.registered_model_version)


def is_model_uri(text: str) -> bool:
    return str(text).startswith("models:/")


def _version(client: Any, uri: str) -> Any:
    """The model version a ``models:/`` URI names (CheckpointError when there is none)."""
    from mlflow.exceptions import MlflowException

    m = _URI.match(uri)
    if m is None:
        raise CheckpointError(f"--checkpoint {uri}: expected models:/<name>/<version>, "
                              f"models:/<name>/latest or models:/<name>@<alias>, e.g. "
                              f"models:/{MODEL_NAME}/latest")
    name = m["name"]
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(name, m["alias"])
        if m["version"] != "latest":
            return client.get_model_version(name, m["version"])
        found = client.search_model_versions(f"name = '{name}'", max_results=1,
                                             order_by=["version_number DESC"])
    except MlflowException as e:
        from isdm.tracking.remote import is_network_failure

        if is_network_failure(e):
            raise  # the server did not answer: connection_errors says so
        found = None
        reason = str(e).splitlines()[0]
    else:
        reason = "it has no versions"
    if found:
        return found[0]
    raise CheckpointError(f"--checkpoint {uri}: no such model version in the MLflow store "
                          f"{client.tracking_uri} ({reason}); `isdm finetune` registers one "
                          f"(tracking.register_model: true), `mlflow ui` lists them under Models")


def resolve_checkpoint(uri: str, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    """Download the checkpoint of the model version ``uri`` names; return its local path and
    ``{"model_uri", "model_version", "model_run_id"}`` (the finetune run that logged it)."""
    import mlflow

    from isdm.tracking import remote

    remote.prepare(tracking_uri)
    with remote.connection_errors(tracking_uri):
        return _download(mlflow, uri, tracking_uri)


def _download(mlflow: Any, uri: str, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = _version(client, uri)
    cache = Path(os.environ.get("ISDM_CACHE") or Path.home() / ".cache" / "isdm")
    folder = cache / "models" / version.name / f"{version.version}-{(version.run_id or 'norun')[:8]}"
    target = folder / "best.pt"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            mlflow.set_tracking_uri(tracking_uri)
            got = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{version.name}/{version.version}/artifacts/best.pt",
                dst_path=tmp)
            os.replace(got, target)  # complete or absent, also for concurrent shards
    info = {"model_uri": f"models:/{version.name}/{version.version}",
            "model_version": str(version.version), "model_run_id": version.run_id or ""}
    return target, info

