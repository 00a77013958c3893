"""The label-efficiency curve: nested seeded subsets (`isdm data subset`), the worth-N
interpolation on hand-made curves (gain, no gain, below and above the real-only curve, a
non-monotone curve), its bootstrap interval on hand-made counts, and `isdm labels` end to end on
hand-made evaluate reports (metrics.json, the plot, the reading, MLflow)."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from isdm.cli import cli
from isdm.errors import DatasetError, EvaluationError, OutputExistsError
from isdm.evaluation import labels as lab

# ----------------------------------------------------------------------------------------------
# nested, seeded subsets
# ----------------------------------------------------------------------------------------------


def _keys(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "train" / "images").iterdir())


def test_subsets_are_nested_seeded_and_carry_the_whole_test_split(synth_dir, tmp_path):
    from isdm.data.digest import dataset_digest
    from isdm.data.subset import write_subset

    out = {f: tmp_path / f"s{f}" for f in (0.25, 0.5, 1.0)}
    for f, folder in out.items():
        m = write_subset(synth_dir, folder, f, seed=3)
        assert m["n"] == round(8 * f) and m["n_source"] == 8 and m["n_test"] == 4
        assert json.loads((folder / "subset.json").read_text())["keys"] == _keys(folder)
        assert _keys(folder) == sorted(p.stem for p in (folder / "train" / "masks").iterdir())
        assert dataset_digest(folder, "test") == dataset_digest(synth_dir, "test")
    assert set(_keys(out[0.25])) < set(_keys(out[0.5])) < set(_keys(out[1.0]))
    assert _keys(out[1.0]) == _keys(synth_dir)
    # the whole split copied: the same digest, so its real-only cells are the source's
    assert dataset_digest(out[1.0]) == dataset_digest(synth_dir)
    again = write_subset(synth_dir, out[0.5], 0.5, seed=3)  # an earlier subset is replaced
    assert again["keys"] == _keys(out[0.5])
    other = [sorted(write_subset(synth_dir, tmp_path / f"o{s}", 0.5, seed=s)["keys"])
             for s in range(4)]
    assert len({tuple(k) for k in other}) > 1  # the seed chooses the subset


def test_a_subsets_runs_go_to_its_source_datasets_mlflow_experiment(synth_dir, tmp_path):
    from isdm.data.subset import MANIFEST, write_subset
    from isdm.tracking import experiment_name

    real = tmp_path / "labels" / "0.5" / "real"  # the labels pipeline's folder name
    write_subset(synth_dir, real, 0.5, seed=0)
    assert experiment_name(real) == f"isdm-{synth_dir.name}" != "isdm-real"
    assert experiment_name(synth_dir) == f"isdm-{synth_dir.name}"
    assert MANIFEST == "subset.json"  # the name tracking reads without importing isdm.data
    (real / MANIFEST).write_text("not json")  # unreadable: the folder's own name
    assert experiment_name(real) == "isdm-real"


def test_subset_refuses_what_it_cannot_write(synth_dir, tmp_path):
    from isdm.data.subset import write_subset

    with pytest.raises(DatasetError, match="at least 2"):
        write_subset(synth_dir, tmp_path / "a", 0.1, 0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")  # refused, kept (issue 22)
    with pytest.raises(OutputExistsError, match=r"holds 1 file\(s\) \(notes.txt\)"):
        write_subset(synth_dir, tmp_path / "mine", 0.5, 0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    res = CliRunner().invoke(cli, ["data", "subset", str(synth_dir), str(tmp_path / "b"),
                                   "--fraction", "0.5", "--seed", "1"])
    assert res.exit_code == 0 and "wrote 4 of 8 train pairs" in res.output, res.output
    res = CliRunner().invoke(cli, ["data", "subset", str(synth_dir), str(tmp_path / "c"),
                                   "--fraction", "1.5"])
    assert res.exit_code == 1 and "must be in (0, 1]" in res.output


# ----------------------------------------------------------------------------------------------
# worth N on hand-made curves
# ----------------------------------------------------------------------------------------------

NS, REAL = [10, 20, 40], [0.5, 0.6, 0.7]


@pytest.mark.parametrize("mixed, at, expected", [
    (0.55, 0, 5.0),       # halfway to the 20-image point
    (0.65, 1, 10.0),      # halfway between 20 and 40 images
    (0.5, 0, 0.0),        # no gain: exactly the real-only mIoU
    (0.6, 2, -20.0),      # a loss at 40 images: what 20 real images give
    (0.55, 1, -5.0),      # a loss: what 15 real images give
    (0.75, 2, math.inf),  # above the whole curve: more than 0 more images (a lower bound)
    (0.45, 0, -math.inf),  # below its first point: fewer than 0 (an upper bound)
    (0.45, 2, -math.inf),  # below it, seen from the last point: fewer than 10 - 40
])
def test_worth_interpolates_the_real_only_curve(mixed, at, expected):
    got = lab.worth(NS, REAL, mixed, at)
    assert got == pytest.approx(expected) if math.isfinite(expected) else got == expected
    assert lab.status(got) == {math.inf: "above", -math.inf: "below"}.get(expected, "interpolated")


def test_worth_reads_a_noisy_curve_near_the_point_with_the_sign_of_its_gain():
    ns, noisy = [10, 20, 40], [0.5, 0.7, 0.6]
    assert lab.worth(ns, noisy, 0.65, 0) == pytest.approx(7.5)  # up from 10 images
    assert lab.worth(ns, noisy, 0.65, 1) == pytest.approx(-2.5)  # a loss at 20: down from it
    # a gain at 40 images is never a negative worth, although 17.5 images reach 0.65
    assert lab.worth(ns, noisy, 0.65, 2) == math.inf
    flat = [0.5, 0.5, 0.5]  # a plateau: equal rows are worth 0 images, wherever the point
    assert [lab.worth(ns, flat, 0.5, j) for j in range(3)] == [0.0, 0.0, 0.0]
    assert lab.status(lab.worth([10, 20], [0.5, float("nan")], 0.55, 0)) == "undefined"


# ----------------------------------------------------------------------------------------------
# the interval, on hand-made counts
# ----------------------------------------------------------------------------------------------


def _counts(mious_per_seed: list[float], n_images: int = 4) -> np.ndarray:
    """``[1, S, N, 2, 3]`` counts whose every image (and pooled set) has the seed's mIoU: both
    classes tp = p, fp + fn = q - p for the mIoU p / q."""
    out = np.zeros((1, len(mious_per_seed), n_images, 2, 3), dtype=np.int64)
    for s, m in enumerate(mious_per_seed):
        f = Fraction(m).limit_denominator(100)
        out[0, s, :, :, 0] = f.numerator
        out[0, s, :, :, 1] = f.denominator - f.numerator
    return out


def _point(fraction: float, n: int, real: list[float], mixed: list[float]) -> lab.Point:
    return lab.Point(fraction, n, "RALLFALL[synthetic]", ("FPN",), tuple(range(len(real))),
                     _counts(real), _counts(mixed))


def test_without_noise_the_interval_is_the_point_and_with_seed_noise_it_spans_the_seeds():
    from isdm.evaluation.labels_report import curve_summary

    points = [_point(0.25, 10, [0.5, 0.5], [0.55, 0.55]), _point(0.5, 20, [0.6, 0.6], [0.6, 0.6]),
              _point(1.0, 40, [0.7, 0.7], [0.75, 0.75])]
    rows = curve_summary(points, 200, 0)["points"]
    assert [r["n"] for r in rows] == [10, 20, 40]
    assert rows[0]["worth"] == rows[0]["worth_lo"] == rows[0]["worth_hi"] == pytest.approx(5.0)
    assert rows[1]["worth"] == pytest.approx(0.0) and rows[1]["status"] == "interpolated"
    assert rows[2]["status"] == "above" and rows[2]["worth"] == 0.0
    assert rows[2]["worth_hi_status"] == "above"
    # seed noise on the smallest point's mixed row: seed 0 worth +5, seed 1 worth +10
    points[0] = _point(0.25, 10, [0.5, 0.5], [0.55, 0.6])
    row = curve_summary(points, 400, 0)["points"][0]
    assert row["worth"] == pytest.approx(7.5)
    assert (row["worth_lo"], row["worth_hi"]) == (pytest.approx(5.0), pytest.approx(10.0))


def test_points_must_share_architectures_seeds_and_test_images():
    a, b = _point(0.5, 10, [0.5], [0.5]), _point(1.0, 20, [0.6, 0.6], [0.6, 0.6])
    with pytest.raises(EvaluationError, match="seeds"):
        lab.check_points([a, b])
    with pytest.raises(EvaluationError, match="same number of labelled images"):
        lab.check_points([_point(0.5, 10, [0.5], [0.5]), _point(1.0, 10, [0.6], [0.6])])


# ----------------------------------------------------------------------------------------------
# `isdm labels` on hand-made evaluate reports
# ----------------------------------------------------------------------------------------------


def _report(folder: Path, n: int, real: list[float], mixed: list[float]) -> None:
    """An `isdm evaluate` output as the curve reads it (report.json, counts.npz, cells.csv)."""
    folder.mkdir(parents=True)
    label = "RALLFALL[synthetic]"
    (folder / "report.json").write_text(json.dumps({
        "main_mix": "RALLFALL", "sets": ["synthetic"],
        "rows": [["RALLF000", "", "mix"], ["RALLFALL", "synthetic", "mix"]],
        "budget": {"architectures": ["FPN"], "seeds": list(range(len(real)))}}))
    np.savez(folder / "counts.npz", **{"FPN__RALLF000": _counts(real)[0],
                                       f"FPN__{label}": _counts(mixed)[0]})
    n_val = max(1, n // 5)
    with open(folder / "cells.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "mix", "seed", "n_real", "n_val"])
        w.writerows([["FPN", "RALLF000", s, n - n_val, n_val] for s in range(len(real))]
                    + [["FPN", label, s, n - n_val, n_val] for s in range(len(real))])


def test_isdm_labels_writes_the_curve_and_says_plainly_when_synthetic_data_does_not_help(
        tmp_path, mlflow_uri):
    import mlflow

    points = tmp_path / "points"
    _report(points / "0.25", 10, [0.5, 0.5], [0.45, 0.45])  # below the curve: a loss
    _report(points / "0.5", 20, [0.6, 0.6], [0.65, 0.65])
    _report(points / "1.0", 40, [0.7, 0.7], [0.7, 0.7])
    params = tmp_path / "labels.yaml"
    params.write_text(yaml.safe_dump({"labels": {"fractions": [0.25, 0.5]},
                                      "evaluate": {"bootstrap": 50}}))
    out = tmp_path / "curve"
    res = CliRunner().invoke(cli, ["labels", "-c", str(params), str(points), "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["worth_status"] == -1 and metrics["n_labelled"] == 10  # the smallest point
    assert metrics["worth_real_images"] == 0.0  # an upper bound: fewer than 10 - 10 images
    assert metrics["worth_p50"] == pytest.approx(10.0) and metrics["worth_status_p50"] == 0
    assert metrics["worth_p100"] == pytest.approx(0.0)
    assert all(math.isfinite(v) for v in metrics.values())
    assert "does not help" in res.output and "worth 10.0 real images" in res.output
    report = (out / "report.md").read_text()
    assert "| 20 | 50 |" in report and "## Reading" in report
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["n"] for r in csv.DictReader((out / "curve.csv").open())] == ["10", "20", "40"]
    run = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.data.tags.get("isdm.action") == "labels")
    assert run.data.metrics["worth_p50"] == pytest.approx(10.0)
    res = CliRunner().invoke(cli, ["labels", "-c", str(params), "--set",
                                   "labels.fractions=[0.1]", str(points), "--out", str(out)])
    assert res.exit_code == 1 and "0.1/report.json is missing" in res.output
