"""Links between runs and to their inputs: MLflow dataset inputs, the runs that produced a
checkpoint, and downstream metrics logged back onto the sample run.

The lineage itself (what a synthetic set records, which params a run logs) is
:mod:`isdm.lineage`; this module only talks to MLflow. Every function takes the current
:class:`isdm.tracking.Run` and does nothing for a :class:`isdm.tracking.NullRun`.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any, Mapping, Optional

__all__ = ["log_input", "producer_runs", "log_downstream", "CONTEXT_TAG"]

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for how a dataset was used


def log_input(client: Any, run_id: str, info: Any, context: str) -> None:
    """Record an :class:`isdm.lineage.DatasetInfo` as an input of run ``run_id`` (what
    ``mlflow.log_input`` does, with isdm's own digest and profile)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=info.name, digest=info.digest, source_type="local",
                      source=json.dumps({"uri": info.source}),
                      profile=json.dumps(dict(info.profile), sort_keys=True))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(CONTEXT_TAG, context)])])


def _producer(client: Any, sha256: str) -> Optional[Any]:
    """The latest train or finetune run that wrote the checkpoint with this SHA-256 (sample and
    evaluate runs carry the same tag as consumers)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for action in ("finetune", "train"):
        query = f"tags.`isdm.checkpoint_sha256` = '{sha256}' and tags.`isdm.action` = '{action}'"
        runs = client.search_runs(experiments, filter_string=query, max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0]
    return None


def producer_runs(run: Any, sha256: str, model_run_id: str = "") -> dict[str, str]:
    """``{"finetune": id, "train": id}``: the run that wrote a checkpoint (found by the SHA-256
    tag of its run, or ``model_run_id`` when it came from the registry) and, following its
    ``isdm.init_sha256``, the run it was finetuned from; the keys that were found."""
    if run.run_id is None:
        return {}
    client = run.client
    found: dict[str, str] = {}
    producer = client.get_run(model_run_id) if model_run_id else _producer(client, sha256)
    while producer is not None:
        action = producer.data.tags.get("isdm.action", "")
        if action not in ("train", "finetune") or action in found:
            break
        found[action] = producer.info.run_id
        init = producer.data.tags.get("isdm.init_sha256")
        producer = _producer(client, init) if init else None
    return found


def log_downstream(run: Any, record: Optional[Mapping[str, Any]],
                   headline: Mapping[str, float]) -> None:
    """Log ``headline`` metrics onto the sample run of ``record`` (and tag it with this
    evaluate run's id), so the sample runs alone compare s, steps and drop rate with the
    downstream result. A sample run not in this store is skipped with a warning."""
    sample_run_id = (record or {}).get("runs", {}).get("sample")
    if run.run_id is None or not sample_run_id:
        return
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in headline.items() if v is not None]
    try:
        run.client.log_batch(sample_run_id, metrics=metrics,
                             tags=[RunTag("isdm.evaluate_run_id", run.run_id)])
    except MlflowException as e:
        warnings.warn(f"the downstream metrics were not logged onto sample run {sample_run_id} "
                      f"(not in this MLflow store?): {str(e).splitlines()[0]}", stacklevel=2)
