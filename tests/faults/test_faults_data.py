"""Faults of datasets, one test per failure mode: every hint of ``isdm data check`` is true for
the data it names (issue 10 case 14: a hint is checked by following it: the suggested
``--num-classes`` / ``--set`` / re-saving must make the same dataset pass, and no message may
suggest a value the config then rejects), and a file name ``data check`` passes never crashes
a later command (issue 22).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from isdm.cli import cli
from isdm.config import DataConfig
from isdm.errors import ConfigError


@pytest.fixture
def run(tmp_path, monkeypatch):
    """The CLI from an empty folder (no ./params.yaml is picked up)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return lambda *args: CliRunner().invoke(cli, [str(a) for a in args])


def _dataset(root, mask: np.ndarray) -> None:
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / split / "images" / "a.png")
        Image.fromarray(mask).save(root / split / "masks" / "a.png")


def _suggested_options(output: str) -> list[str]:
    """The command-line options the ``fix:`` lines suggest (``--num-classes N``, ``--set k=v``)."""
    fixes = "\n".join(line for line in output.splitlines() if line.strip().startswith("fix:"))
    return re.findall(r"--num-classes \d+|--set \S+=[^\s)]+", fixes)


def test_a_sixteen_bit_mask_gets_no_impossible_num_classes(run, tmp_path):
    # ids 0, 1, 2, 4 stretched to 16 bits (x 257): the maximum is 1028, 255 in an 8-bit view
    mask = np.array([[0, 257, 514, 1028]] * 4, np.uint16)
    _dataset(tmp_path / "ds", mask)
    result = run("data", "check", tmp_path / "ds", "--num-classes", "5")
    assert result.exit_code == 1
    assert "1029" not in result.output, result.output
    for n in re.findall(r"num.classes\D{0,5}(\d+)", result.output):
        assert int(n) <= 255, result.output
    assert "16-bit" in result.output and "divide them by 257" in result.output
    # following the hint (8-bit ids = value / 257) gives a valid dataset
    _dataset(tmp_path / "fixed", (mask // 257).astype(np.uint8))
    assert run("data", "check", tmp_path / "fixed", "--num-classes", "5").exit_code == 0


def test_no_use_255_advice_for_a_value_that_is_255(run, tmp_path):
    with pytest.raises(ConfigError) as e:
        DataConfig(num_classes=1029, ignore_index=255)
    # the value that is wrong is num_classes; ignore_index=255 is already what a fix would say
    assert "use 255" not in str(e.value) and "1029" in str(e.value)
    _dataset(tmp_path / "ds", np.array([[0, 257, 514, 1028]] * 4, np.uint16))
    result = run("data", "check", tmp_path / "ds", "--num-classes", "1029")
    assert result.exit_code == 1 and "use 255" not in result.output, result.output


@pytest.mark.parametrize("values, options", [
    ((0, 1, 2, 255), ["--set", "data.ignore_index=null"]),  # 255 with no ignore_index
    ((0, 3, 12, 255), ["--set", "data.ignore_index=10"]),   # ids above an ignore_index
    ((0, 1, 7), []),                                        # plain class ids
])
def test_following_the_mask_hints_makes_the_check_pass(run, tmp_path, values, options):
    _dataset(tmp_path / "ds", np.array([values] * 4, np.uint8))
    args = ["data", "check", tmp_path / "ds", "--num-classes", "3", *options]
    result = run(*args)
    assert result.exit_code == 1
    suggested = _suggested_options(result.output)
    assert suggested, result.output
    followed = run(*args, *(part for opt in suggested for part in opt.split(" ", 1)))
    assert followed.exit_code == 0, (suggested, followed.output)


def test_file_names_that_are_not_utf8_are_reported_and_crash_nothing(run, synth_dir, tmp_path):
    """Issue 22: a name with bytes that are not UTF-8 (e.g. Latin-1 ``café``) passed ``data
    check`` and crashed ``train`` with a UnicodeEncodeError."""
    import os
    import shutil

    from faultkit import no_traceback

    ds = tmp_path / "ds"
    shutil.copytree(synth_dir, ds)
    image = sorted((ds / "train" / "images").iterdir())[0]
    for folder, src in (("images", image), ("masks", ds / "train" / "masks" / image.name)):
        shutil.copy(src, os.fsencode(ds / "train" / folder) + b"/caf\xe9.png")
    check = run("data", "check", ds, "--mode", "multi-class", "--num-classes", "5")
    assert check.exit_code == 1 and "Traceback" not in check.output
    assert check.output.count("file name not valid UTF-8") == 2
    assert "train/images/caf\\xe9.png" in check.output and "convmv" in check.output
    train = run("train", "--data", ds, "--out", tmp_path / "sdm", "--no-progress",
                "--set", "tracking.enabled=false", "--set", "data.image_size=32",
                "--set", "model.preset=tiny", "--set", "train.max_steps=1")
    assert no_traceback(train) and "file name not valid UTF-8" in train.output, train.output
