"""The GPU check's helpers that need isdm's environment (torch, PyYAML, isdm); run with the
set-up environment's python by ``scripts/gpu_check.py``:

    python scripts/gpu_check_venv.py env-info OUT.json [--require-cuda]
    python scripts/gpu_check_venv.py merge-config OUT.yaml BASE [--overlay FILE ...] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "numpy", "timm", "segmentation-models-pytorch", "pytest",
            "PyYAML", "click", "pillow")
PINS = {"torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31",
        "segmentation-models-pytorch": "0.6.0"}  # pyproject.toml's


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not found"
    out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
    return out.stdout + out.stderr


def gpu_facts() -> dict[str, Any]:
    """What torch sees: CUDA, the GPU, its memory, bf16, the TF32 defaults."""
    import torch

    facts: dict[str, Any] = {"cuda_available": torch.cuda.is_available(),
                             "torch_cuda": torch.version.cuda,
                             "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
                             else None,
                             "tf32_conv": torch.backends.cudnn.allow_tf32,
                             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(device_count=torch.cuda.device_count(),
                     gpu=torch.cuda.get_device_name(0),
                     capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                     memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count,
                     bf16_supported=torch.cuda.is_bf16_supported())
    return facts


def env_info(out: Path, require_cuda: bool) -> int:
    """Print and save the environment; rc 1 when CUDA is required and absent."""
    print(_nvidia_smi())
    info = {"python": platform.python_version(), "python_executable": sys.executable,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "versions": {p: _version(p) for p in PACKAGES},
            "pins_differ": {p: f"{_version(p)} (pinned {v})" for p, v in PINS.items()
                            if not _version(p).startswith(v)},
            **gpu_facts()}
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    if require_cuda and not info["cuda_available"]:
        print("gpu-check: torch.cuda.is_available() is False: no CUDA device for this torch "
              f"({info['versions']['torch']})", file=sys.stderr)
        return 1
    return 0


def flatten(tree: Any, prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b=1"]``: an overlay as ``--set`` strings (values as JSON,
    which the config loader parses as YAML)."""
    if isinstance(tree, dict):
        return [s for k, v in tree.items() for s in flatten(v, f"{prefix}.{k}" if prefix else k)]
    return [f"{prefix}={json.dumps(tree)}"]


def merge_config(out: Path, base: str, overlays: list[str], sets: list[str]) -> int:
    """``base`` + each overlay (in order) + ``sets``, loaded strictly by isdm and written resolved
    (every key) to ``out``."""
    import yaml

    from isdm.config import load_config, save_config
    from isdm.errors import IsdmError

    flat = [s for path in overlays for s in flatten(yaml.safe_load(Path(path).read_text()) or {})]
    try:
        cfg = load_config(base, [*flat, *sets])
    except IsdmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    save_config(cfg, out)
    print(f"wrote {out}: {base} + {' + '.join(overlays) or 'no overlay'} + {len(sets)} --set")
    for s in [*flat, *sets]:
        print(f"  --set {s}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    env = sub.add_parser("env-info")
    env.add_argument("out", type=Path)
    env.add_argument("--require-cuda", action="store_true")
    merge = sub.add_parser("merge-config")
    merge.add_argument("out", type=Path)
    merge.add_argument("base")
    merge.add_argument("--overlay", action="append", default=[])
    merge.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args(argv)
    if args.cmd == "env-info":
        return env_info(args.out, args.require_cuda)
    return merge_config(args.out, args.base, args.overlay, args.sets)


if __name__ == "__main__":
    sys.exit(main())
