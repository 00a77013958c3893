"""MLflow tracking: the only package that imports mlflow (lazily, inside functions).

Every CLI action runs inside :func:`start_run`, which yields a :class:`Run` with a small, stable
API (``log_params``, ``log_metrics``, ``log_artifact``, ``set_tags``, ``log_dataset``).
With tracking disabled the same calls go to a :class:`NullRun` and do nothing, so library code
never branches on whether MLflow is on.

Where runs go: ``tracking.tracking_uri`` if set, else ``$MLFLOW_TRACKING_URI``, else the embedded
store ``sqlite:///<root>/mlflow.db`` (artifacts in ``./mlruns``), ``<root>`` being the DVC project
root while a DVC stage runs (``$DVC_ROOT``), else the working directory. One experiment per
dataset (``tracking.experiment`` or ``isdm-<dataset folder name>``; a label subset written by
``isdm data subset`` goes to its source dataset's experiment: :func:`experiment_name`).

Grouping: every run is tagged ``isdm.pipeline`` (:func:`pipeline_id`) and ``isdm.action`` (and
``isdm.dvc_stage`` inside DVC); a run started while another is active, or with
``parent_run_id``, becomes its child (Optuna trials under a study run, evaluate cells under the
evaluate run). Under ``mlflow run`` (which exports ``$MLFLOW_RUN_ID``) the project's run is
reused, in its own experiment.

A tracking server (``http://...``): bounded waits, a reachability check before the first run,
and a clear :class:`isdm.errors.TrackingError` when it cannot be reached or stops answering
mid-run (:mod:`isdm.tracking.remote`).

Status: a run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, SIGHUP; and,
for SIGKILL, when a later run finds its process gone): :mod:`isdm.tracking.liveness`.

The other modules: :mod:`~isdm.tracking.links` (dataset inputs, links between runs),
:mod:`~isdm.tracking.registry` (the finetuned SDM as the registered model ``isdm-sdm``;
``models:/`` checkpoints).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from isdm.errors import TrackingError

__all__ = ["Run", "NullRun", "start_run", "resolve_tracking_uri", "pipeline_id", "short",
           "experiment_name"]

_INVOCATION_ID: Optional[str] = None  # this process's pipeline id outside DVC (see pipeline_id)


def experiment_name(dataset: str | Path) -> str:
    """The default experiment of a dataset folder: ``isdm-<folder name>``, or for a subset
    written by ``isdm data subset`` (its ``subset.json`` names a ``source``) the source's
    experiment, so the label curve's points of CrackForest sit beside its full-data runs
    instead of in one ``isdm-real`` shared by every dataset's subsets (their folders are
    ``data/labels/<f>/real``). An unreadable manifest falls back to the folder name."""
    import json

    path = Path(dataset)
    try:  # the name of isdm.data.subset.MANIFEST (tracking imports no data code)
        source = json.loads((path / "subset.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    if isinstance(source, str) and source and Path(source).name:
        path = Path(source)
    return f"isdm-{path.name or 'default'}"


def resolve_tracking_uri(uri: str = "") -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or "no-git"


def pipeline_id() -> str:
    """Identifier that groups the runs of one pipeline execution in ``mlflow ui``.

    1. ``$ISDM_PIPELINE_ID`` when set (``make repro`` sets one per call);
    2. ``$DVC_EXP_NAME``: the experiment name ``dvc exp run`` gives every stage;
    3. under ``dvc repro`` (``$DVC_STAGE`` and ``$DVC_ROOT`` set): ``<git rev>-p<digest of
       params.yaml>``, the same for every stage of one repro;
    4. otherwise (a standalone command) a fresh ``<git rev>-<UTC time>-<4 hex>`` per process,
       shared by every run the process opens (evaluate cells, tune trials).
    """
    global _INVOCATION_ID
    for var in ("ISDM_PIPELINE_ID", "DVC_EXP_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    params = Path(os.environ.get("DVC_ROOT", "")) / "params.yaml"
    if os.environ.get("DVC_STAGE") and os.environ.get("DVC_ROOT") and params.is_file():
        import hashlib

        return _git_rev() + "-p" + hashlib.sha256(params.read_bytes()).hexdigest()[:8]
    if _INVOCATION_ID is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        _INVOCATION_ID = f"{_git_rev()}-{stamp}-{uuid.uuid4().hex[:4]}"
    return _INVOCATION_ID


def short(value: Any, digits: int = 4) -> str:
    """A value for a run name: floats with ``digits`` significant digits (``2.744``, not
    ``2.7440675196366238``; ``0.0001``, ``1e-05``), anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _scalar(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return "null" if v is None else v


class NullRun:
    """Does nothing; returned when tracking is disabled."""

    run_id: Optional[str] = None
    parent_run_id: Optional[str] = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_dataset(self, dataset: Any, context: str) -> None: ...
    def register_model(self, checkpoint: str | Path, config_json: str | Path, cfg: Any) -> Optional[str]: ...


class Run(NullRun):
    """A thin handle on one active MLflow run."""

    def __init__(self, mlflow_run: Any, parent_run_id: Optional[str] = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self.client = mlflow.MlflowClient()
        self.run_id = mlflow_run.info.run_id
        self.experiment_id = mlflow_run.info.experiment_id
        self.parent_run_id = parent_run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = {k: str(_scalar(v))[:6000] for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 100):  # MLflow caps a batch at 100 params
            self._mlflow.log_params({k: items[k] for k in keys[i:i + 100]})

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, dataset: Any, context: str) -> None:
        """Log an :class:`isdm.lineage.DatasetInfo` as an MLflow dataset input (``context``:
        how the run used it, e.g. ``training``)."""
        from isdm.tracking.links import log_input

        log_input(self.client, self.run_id, dataset, context)

    def register_model(self, checkpoint: str | Path, config_json: str | Path, cfg: Any) -> Optional[str]:
        """Log ``checkpoint`` as this run's MLflow model and register a new version of
        ``isdm-sdm`` (:mod:`isdm.tracking.registry`); tag the run with it; return the version."""
        from isdm.tracking.registry import MODEL_NAME, register_sdm

        version = register_sdm(checkpoint, config_json, cfg)
        self.set_tags({"isdm.model_version": f"{MODEL_NAME}/{version}"})
        return version


@contextmanager
def start_run(
    tracking: Any,
    *,
    name: str,
    action: str,
    dataset: str = "",
    params: Optional[Mapping[str, Any]] = None,
    tags: Optional[Mapping[str, Any]] = None,
    parent_run_id: Optional[str] = None,
    run_id: Optional[str] = None,
) -> Iterator[NullRun]:
    """Open an MLflow run (or a :class:`NullRun` when ``tracking.enabled`` is false).

    Args:
        tracking: a :class:`isdm.config.TrackingConfig`.
        name: a run name that says what it is, e.g. ``"sample dpmpp2m 20 steps s=1.5"``.
        action: ``train`` / ``finetune`` / ``sample`` / ``evaluate`` / ``tune`` / ``trial`` ...
        dataset: dataset folder, used for the default experiment name (:func:`experiment_name`).
        params: flat dotted params (``isdm.config.flatten(cfg)``), logged at start.
        tags: extra tags.
        parent_run_id: make this run a child of that run (nested). Without it, a run started
            while another is active in this process is nested under it.
        run_id: continue this existing run instead of creating one (another Optuna worker's
            study run); its experiment is kept.

    The run ends FINISHED, FAILED on an exception, KILLED on Ctrl-C, SIGTERM or SIGHUP (the
    process then exits with 128 + the signal number): :mod:`isdm.tracking.liveness`.
    """
    if not getattr(tracking, "enabled", True):
        yield NullRun()
        return
    from isdm.tracking import liveness, local_store, remote

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = resolve_tracking_uri(getattr(tracking, "tracking_uri", ""))
    remote.prepare(uri)
    local_store.prepare(uri)  # a local SQLite store: checked, created once (issue 22)
    import mlflow

    mlflow.set_tracking_uri(uri)
    with remote.connection_errors(uri):
        run_obj, parent, outermost = _open_run(mlflow, tracking, name, action, dataset, tags,
                                               parent_run_id, run_id)
    try:
        with remote.connection_errors(uri), liveness.signals_raise(outermost=outermost):
            run = Run(run_obj, parent)
            if params:
                run.log_params(params)
            yield run
    except (KeyboardInterrupt, liveness.Interrupted):
        _end_run(mlflow, uri, "KILLED", quiet=True)
        raise
    except TrackingError:  # the server stopped answering: one short try to end the run
        with remote.one_try():
            _end_run(mlflow, uri, "FAILED", quiet=True)
        raise
    except BaseException:
        _end_run(mlflow, uri, "FAILED", quiet=True)
        raise
    _end_run(mlflow, uri, "FINISHED", quiet=False)


def _end_run(mlflow: Any, uri: str, status: str, quiet: bool) -> None:
    """End the active run with ``status``. A server that stopped answering is a TrackingError,
    or, while another error is on its way out (``quiet``), ignored (the run is left RUNNING for
    :func:`liveness.end_orphans`); MLflow has forgotten the run locally either way."""
    from isdm.tracking import remote

    try:
        with remote.connection_errors(uri):
            mlflow.end_run(status=status)
    except TrackingError:
        if not quiet:
            raise


def _open_run(mlflow: Any, tracking: Any, name: str, action: str, dataset: str,
              tags: Optional[Mapping[str, Any]], parent_run_id: Optional[str],
              run_id: Optional[str]) -> tuple[Any, Optional[str], bool]:
    """Start (or continue) the MLflow run of :func:`start_run`; ``(run, parent run id, whether
    it is the outermost run of this process)``."""
    from isdm.tracking import liveness

    active = mlflow.active_run()
    project_run = os.environ.get("MLFLOW_RUN_ID") if active is None and not parent_run_id else None
    existing = run_id or project_run  # `mlflow run` exports MLFLOW_RUN_ID: resume its run
    if existing:
        experiment_id = mlflow.MlflowClient().get_run(existing).info.experiment_id
    else:
        experiment = getattr(tracking, "experiment", "") or experiment_name(dataset)
        experiment_id = mlflow.set_experiment(experiment).experiment_id
    if active is None:
        liveness.end_orphans(mlflow.MlflowClient(), experiment_id)
    parent = parent_run_id or (active.info.run_id if active else None)
    all_tags = {"isdm.action": action, "isdm.pipeline": pipeline_id(), **(tags or {})}
    if not run_id:  # a joined study run keeps the identity of the process that created it
        all_tags.update(liveness.process_tags())
    if os.environ.get("DVC_STAGE"):
        all_tags["isdm.dvc_stage"] = os.environ["DVC_STAGE"]
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run_obj = mlflow.start_run(run_id=run_id, run_name=name, experiment_id=experiment_id,
                               nested=active is not None, tags={k: str(v) for k, v in all_tags.items()},
                               log_system_metrics=getattr(tracking, "system_metrics", False) or None)
    return run_obj, parent, active is None
