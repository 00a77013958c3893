"""Lineage end to end: train -> finetune (registered as isdm-sdm) -> sample from models:/ at
s=3.0 while params.yaml says 2.0 -> evaluate. The evaluate run carries the generator's values
and run ids, the sample run the downstream numbers, every run its datasets."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from isdm.cli import cli

pytestmark = pytest.mark.slow

PARAMS = {
    "data": {"image_size": 32, "num_classes": 5},
    "model": {"preset": "tiny"},
    "diffusion": {"diffusion_steps": 50},
    "train": {"batch_size": 4, "max_epochs": 1, "max_steps": 2, "save_last": False},
    "finetune": {"batch_size": 4, "max_epochs": 1, "max_steps": 2, "save_last": False,
                 "drop_rate": 0.3},
    "sample": {"num_samples": 4, "batch_size": 4, "steps": 2, "sampler": "ddim", "s": 2.0,
               "seed": 3},
    "evaluate": {"architectures": ["FPN"], "mixes": ["RALLF000", "RALLF4"], "seeds": [0],
                 "steps": 2, "val_every": 2, "image_size": 32, "batch_size": 4,
                 "bootstrap": 50},
}


def _isdm(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(synth_dir, tmp_path_factory, _mlflow_template):
    """The four commands once, into one fresh MLflow store (MLFLOW_TRACKING_URI)."""
    import shutil

    root = tmp_path_factory.mktemp("lineage")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("ISDM_CACHE", str(root / "cache"))
        mp.chdir(root)
        c, d = ["-c", str(params)], ["--data", str(synth_dir)]
        _isdm("train", *c, *d, "--out", "sdm")
        _isdm("finetune", *c, *d, "--init", "sdm/best.pt", "--out", "sdm_ft")
        _isdm("sample", *c, *d, "--checkpoint", "models:/isdm-sdm/latest", "--out", "syn",
              "--device", "cpu", "--set", "sample.s=3.0")
        _isdm("evaluate", *c, *d, "--synthetic", "syn", "--out", "eval")
        import mlflow

        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        by_action = {}
        for run in runs:
            by_action.setdefault(run.data.tags["isdm.action"], []).append(run)
        yield root, by_action


def test_evaluate_logs_the_generator_of_its_synthetic_set(pipeline):
    root, runs = pipeline
    (ev,), (sample,), (ft,), (tr,) = (runs[a] for a in ("evaluate", "sample", "finetune", "train"))
    # the generator's values, not params.yaml's (sample.s 2.0 there)
    assert ev.data.params["sample.s"] == "3.0" and ev.data.params["sample.steps"] == "2"
    assert ev.data.params["finetune.drop_rate"] == "0.3"
    assert "train.lr" not in ev.data.params and ev.data.params["evaluate.steps"] == "2"
    assert ev.data.tags["isdm.sample_run_id"] == sample.info.run_id
    assert ev.data.tags["isdm.finetune_run_id"] == ft.info.run_id
    assert ev.data.tags["isdm.train_run_id"] == tr.info.run_id
    # ... and the sample run carries the downstream numbers of that evaluation
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert sample.data.metrics["miou_gain"] == pytest.approx(metrics["miou_gain"])
    assert sample.data.tags["isdm.evaluate_run_id"] == ev.info.run_id
    assert sample.data.params["sample.s"] == "3.0" and sample.data.params["finetune.drop_rate"] == "0.3"


def test_search_by_sample_s_finds_the_sample_run_with_its_gain(pipeline):
    import mlflow

    _, runs = pipeline
    found = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="params.`sample.s` = '3.0'")
    samples = [r for r in found if r.data.tags["isdm.action"] == "sample"]
    assert [r.info.run_id for r in samples] == [runs["sample"][0].info.run_id]
    assert "miou_gain" in samples[0].data.metrics
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="params.`sample.s` = '2.0'")


def test_generator_record_in_the_synthetic_folder(pipeline):
    from isdm.training.checkpoint import checkpoint_hash
    from isdm.utils.dvc_hash import md5_file

    root, runs = pipeline
    ckpt = root / "sdm_ft" / "best.pt"
    for name in ("run.json", "summary.json"):
        gen = json.loads((root / "syn" / name).read_text())["generator"]
        assert gen["checkpoint"] == "models:/isdm-sdm/latest" and gen["model_version"] == "1"
        assert gen["checkpoint_sha256"] == checkpoint_hash(ckpt)
        assert gen["checkpoint_md5"] == md5_file(ckpt)
        assert (gen["checkpoint_action"], gen["drop_rate"]) == ("finetune", 0.3)
        assert (gen["sample"]["s"], gen["sample"]["steps"], gen["sample"]["seed"]) == (3.0, 2, 3)
        assert gen["runs"] == {"sample": runs["sample"][0].info.run_id,
                               "finetune": runs["finetune"][0].info.run_id,
                               "train": runs["train"][0].info.run_id}
    manifest = [json.loads(x) for x in (root / "syn" / "manifest.jsonl").read_text().splitlines()]
    assert {r["s"] for r in manifest} == {3.0} and "generator" not in manifest[0]


def test_runs_log_their_datasets_with_dvc_hashes(pipeline, synth_dir):
    from isdm.utils.dvc_hash import md5_folder

    root, runs = pipeline

    def inputs(run):
        return {(i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context")):
                i.dataset for i in run.inputs.dataset_inputs}

    real = md5_folder(synth_dir)
    for action, context in (("train", "training"), ("finetune", "training"),
                            ("sample", "masks"), ("evaluate", "real")):
        ds = inputs(runs[action][0])[(synth_dir.name, context)]
        assert ds.digest == real and json.loads(ds.source)["uri"] == str(synth_dir.resolve())
        assert json.loads(ds.profile)["num_pairs"] == {"train": 8, "test": 4}
    generated = inputs(runs["sample"][0])[("syn", "generated")]
    evaluated = inputs(runs["evaluate"][0])[("syn", "synthetic")]
    assert generated.digest == evaluated.digest
    profile = json.loads(evaluated.profile)
    assert profile["num_pairs"] == 4 and len(profile["class_shares"]) == 5
    assert sum(profile["class_shares"]) == pytest.approx(1.0, abs=1e-5)
    assert profile["dvc_md5"]["samples"] == md5_folder(root / "syn" / "samples")


def test_finetune_is_registered_and_samples_through_models_uri(pipeline):
    import mlflow
    import numpy as np

    from isdm.tracking.registry import resolve_checkpoint
    from isdm.training.checkpoint import checkpoint_hash

    root, runs = pipeline
    ft = runs["finetune"][0]
    assert ft.data.tags["isdm.model_version"] == "isdm-sdm/1"
    assert ft.data.tags["isdm.checkpoint_md5"]
    client = mlflow.MlflowClient()
    version = client.get_model_version("isdm-sdm", "1")
    assert version.run_id == ft.info.run_id
    cached = next((root / "cache").rglob("best.pt"))
    assert checkpoint_hash(cached) == checkpoint_hash(root / "sdm_ft" / "best.pt")
    client.set_registered_model_alias("isdm-sdm", "champion", "1")
    path, info = resolve_checkpoint("models:/isdm-sdm@champion", mlflow.get_tracking_uri())
    assert path == cached and info == {"model_uri": "models:/isdm-sdm/1", "model_version": "1",
                                       "model_run_id": ft.info.run_id}
    # the pyfunc: uint8 label maps in, uint8 images out, deterministic for one seed
    model = mlflow.pyfunc.load_model("models:/isdm-sdm/1")
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:20, 8:20] = 2
    a = model.predict(labels, params={"steps": 2, "seed": 1})
    b = model.predict(labels, params={"steps": 2, "seed": 1})
    assert a.dtype == np.uint8 and a.shape == (2, 32, 32, 3) and np.array_equal(a, b)


def test_unknown_model_version_is_a_clear_error(pipeline, synth_dir):
    root, _ = pipeline
    result = CliRunner().invoke(cli, ["sample", "-c", str(root / "params.yaml"), "--data",
                                      str(synth_dir), "--checkpoint", "models:/isdm-sdm/7",
                                      "--out", str(root / "nope")])
    assert result.exit_code == 1 and "models:/isdm-sdm/7" in result.output
    assert "isdm finetune" in result.output and "Traceback" not in result.output


def test_evaluate_of_a_folder_without_record_logs_no_sample_params(synth_dir, mlflow_uri,
                                                                   tmp_path):
    import shutil

    import mlflow

    syn = tmp_path / "syn"
    for sub, src in (("samples", "images"), ("labels", "masks")):
        (syn / sub).mkdir(parents=True)
        for p in sorted((synth_dir / "train" / src).iterdir())[:4]:
            shutil.copy(p, syn / sub / (p.stem + ".png"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**{k: PARAMS[k] for k in ("data", "evaluate")},
                                      "sample": {"s": 2.0}}))
    _isdm("evaluate", "-c", str(params), "--data", str(synth_dir), "--synthetic", str(syn),
          "--out", str(tmp_path / "eval"))
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="tags.`isdm.action` = 'evaluate'")
    assert not any(k.startswith("sample.") for k in run.data.params)
    assert "no generator record" in run.data.tags["isdm.generator"]
