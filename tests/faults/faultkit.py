"""Helpers of the fault suite (``from faultkit import ...``; fixtures: ``conftest.py``): the CLI
as a user calls it, the tiny config, small real checkpoints (the faked sampling engine:
``fake_engine`` of tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
QUICK = ("--no-progress", "--set", "tracking.enabled=false", "--set", "train.max_steps=1",
         "--set", "finetune.max_steps=1")


def isdm(*args: str):
    """``isdm ARGS`` through click (exceptions that are not isdm's stay in ``.exception``)."""
    from isdm.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def train_tiny(data: Path, out: Path, *extra: str):
    return isdm("train", "-c", TINY, "--data", data, "--out", out, *QUICK, *extra)


def no_traceback(result) -> bool:
    """A CLI result that ended with a clear message: exit 1 (or 2, a usage error), no Python
    exception escaping, no traceback printed."""
    return (result.exit_code in (1, 2) and "Traceback" not in result.output
            and (result.exception is None or isinstance(result.exception, SystemExit)))


def cfg_for(**sample):
    from isdm.config import Config, from_dict

    return from_dict(Config, {
        "data": {"num_classes": 5, "image_size": 32},
        "sample": {"num_samples": 6, "batch_size": 4, "steps": 2, "seed": 1, **sample},
        "tracking": {"enabled": False}})


def outputs(out: Path) -> dict[str, bytes]:
    from isdm.sampling.writer import FOLDERS

    got = {f"{f}/{p.name}": p.read_bytes() for f in FOLDERS for p in sorted((out / f).iterdir())}
    got["manifest.jsonl"] = (out / "manifest.jsonl").read_bytes()
    return got


def cli_sample(tmp_path: Path, data: Path, ckpt: Path, out: Path, *extra: str):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": {"num_classes": 5, "image_size": 32},
                                  "sample": {"num_samples": 6, "batch_size": 4, "steps": 2},
                                  "tracking": {"enabled": False}}))
    return isdm("sample", "-c", params, "--data", data, "--checkpoint", ckpt, "--out", out,
                *extra)


TINY_CKPT = ("diffusion.diffusion_steps=50",)  # the overrides random_checkpoint trains with


def random_checkpoint(path: Path, *, action: str = "train", drop_rate: float = 0.0,
                      poison: bool = False) -> Path:
    """A real checkpoint of the tiny network (random weights, written by
    ``checkpoint.save``) in a second; ``poison`` puts a NaN into its weights afterwards."""
    import torch

    from isdm.config import load_config, to_dict
    from isdm.models import build_model
    from isdm.training import checkpoint

    section = "finetune" if action == "finetune" else "train"
    cfg = load_config(TINY, [*TINY_CKPT, f"{section}.drop_rate={drop_rate}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes)
    opt = torch.optim.AdamW(model.parameters())
    sum(p.float().pow(2).sum() for p in model.parameters()).backward()
    opt.step()  # an optimiser state with moments, as a resume loads it
    state = {"model": model.state_dict(), "ema": {}, "optimizer": opt.state_dict(),
             "scaler": None, "step": 1, "epoch": 1, "best_loss": 1.0, "bad_epochs": 0,
             "rng": {}, "history": [], "config": to_dict(cfg),
             "meta": {"image_size": 32, "num_classes": 5, "action": action}}
    checkpoint.save(state, path)
    if poison:
        raw = torch.load(path, weights_only=True)
        name = next(iter(raw["model"]))
        raw["model"][name] = raw["model"][name].clone().fill_(float("nan"))
        del raw["meta"]["state_sha256"], raw["meta"]["weights_sha256"]  # as another tool writes
        torch.save(raw, path)
    return path
