"""Set isdm up where no package index is reachable but torch is already installed.

``python3 scripts/setup_offline.py [--venv .venv] [--wheels .whl]`` (``make setup-offline``)

For a GPU machine whose image brings torch, torchvision, numpy, pytest ... but no route to a
package index (the device machine of this workplace, an air-gapped GPU server). ``make setup``
cannot run there: it installs torch==2.14.1 and the whole stack from an index. Instead this makes
``--venv`` a virtual environment on top of the RUNNING interpreter's packages:

1. ``python -m venv --without-pip VENV`` (no index, no ensurepip needed);
2. the ``*.whl`` files in ``--wheels`` go into VENV's site-packages (``pip install --no-index
   --no-deps --target``): the packages isdm needs that the image lacks, fetched beforehand on a
   machine with an index by ``scripts/gpu_wheels.sh`` (segmentation-models-pytorch, timm);
3. ``isdm_src.pth`` puts this checkout's ``src`` on the path (an editable install without
   pip), ``isdm_zbase.pth`` adds the running interpreter's site-packages after it (``import
   site; site.addsitedir(...)``: a venv made from a venv does not see its parent's packages);
4. ``VENV/bin/isdm`` runs ``isdm.cli.main``; ``VENV/.installed`` is the Makefile's set-up stamp,
   so ``make bench-gpu VENV=...`` uses this environment as it is;
5. the imports isdm's commands and tests need are checked; a missing one is named with the
   command that fetches it as a wheel.

Search order in VENV: its own site-packages (the wheels), then ``src``, then the image's packages.
Versions are the image's (e.g. torch 2.11 where ``pyproject.toml`` pins 2.14.1): the check's
``env`` phase records them. Not needed here and not imported by the GPU check: mlflow (tracking
is off), dvc (the stages run as ``isdm`` commands), optuna (no ``isdm tune``).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "isdm-offline.json"  # written into VENV: this script made it (safe to re-create)
# import name -> what to carry when it is missing (scripts/gpu_wheels.sh fetches the wheels)
NEEDED = {"torch": "the image's torch (cannot be carried: GBs)", "torchvision": "the image's",
          "numpy": "the image's", "PIL": "pillow", "yaml": "pyyaml", "click": "click",
          "tqdm": "tqdm", "matplotlib": "matplotlib", "filelock": "filelock",
          "timm": "timm==1.0.31",
          "segmentation_models_pytorch": "segmentation-models-pytorch==0.6.0",
          "pytest": "pytest", "isdm": "this checkout's src (isdm_src.pth)"}


def base_site_dirs() -> list[str]:
    """The running interpreter's package folders (a venv's site-packages, a distribution's
    dist-packages), existing ones, in search order."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"]]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i] and Path(d).is_dir()]


def make_venv(path: Path) -> Path:
    """A fresh ``--without-pip`` venv at ``path``; returns its site-packages folder.

    Refuses a folder that exists and was not made by this script (a ``make setup`` .venv)."""
    if path.exists() and not (path / MARKER).exists():
        sys.exit(f"setup_offline: {path} exists and was not made by this script (no {MARKER}); "
                 "remove it or pass another --venv")
    venv.EnvBuilder(clear=True, with_pip=False, symlinks=True).create(path)
    out = subprocess.run([str(path / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def install_wheels(wheels: list[Path], target: Path) -> None:
    """``pip install --no-index --no-deps --target`` with the running interpreter's pip."""
    if not wheels:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
           "--no-compile", "--disable-pip-version-check", "--target", str(target),
           *map(str, wheels)]
    print("setup_offline:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def link_packages(site_dir: Path, bin_dir: Path) -> None:
    """The two .pth files and the ``isdm`` command (see the module docstring)."""
    (site_dir / "isdm_src.pth").write_text(f"{REPO / 'src'}\n")
    (site_dir / "isdm_zbase.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in base_site_dirs()))
    script = bin_dir / "isdm"
    # the guard: a spawned cell worker imports this file as __mp_main__ and must not run a
    # second command (pip's console scripts have it too)
    script.write_text(f"#!{bin_dir / 'python'}\nimport sys\n\nfrom isdm.cli import main\n\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)


def missing_imports(python: Path) -> list[str]:
    """Modules of :data:`NEEDED` that ``python`` cannot import, and whether isdm is this src."""
    code = ("import importlib, json, sys\nbad = []\n"
            f"for m in {list(NEEDED)!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as e:\n        bad.append(f'{m} ({type(e).__name__}: {e})')\n"
            "import isdm\n"
            f"if not isdm.__file__.startswith({str(REPO / 'src')!r}):\n"
            "    bad.append(f'isdm comes from {isdm.__file__}, not this checkout')\n"
            "print(json.dumps(bad))\n")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return [f"the venv's python failed: {out.stderr.strip()[-500:]}"]
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(REPO / ".venv"))
    parser.add_argument("--wheels", default=str(REPO / ".whl"),
                        help="folder of *.whl to install (scripts/gpu_wheels.sh); may be absent")
    args = parser.parse_args(argv)
    path, wheel_dir = Path(args.venv).absolute(), Path(args.wheels)
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    site_dir = make_venv(path)
    install_wheels(wheels, site_dir)
    link_packages(site_dir, path / "bin")
    (path / MARKER).write_text(json.dumps({"base_python": sys.executable,
                                           "base_site": base_site_dirs(),
                                           "wheels": [w.name for w in wheels]}, indent=2))
    bad = missing_imports(path / "bin" / "python")
    if bad:
        print("setup_offline: cannot import " + "; ".join(bad) + ".\nCarry what is missing as "
              "wheels: on a machine with a package index run scripts/gpu_wheels.sh (edit its "
              f"list: {', '.join(v for v in NEEDED.values())}), then pass the folder as --wheels.",
              file=sys.stderr)
        return 1
    (path / ".installed").touch()
    print(f"setup_offline: {path} ready: {len(wheels)} wheels, base packages of {sys.executable}"
          f", isdm from {REPO / 'src'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
