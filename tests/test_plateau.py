"""The plateau tool: its table on hand-made curves, and one tiny real run of its command line."""

from __future__ import annotations

import csv

import pytest

from isdm.bench.plateau import main, plateau_table


def _rows(arch: str, curves: dict[int, list[float]], seconds: float = 1.0) -> list[dict]:
    return [{"dataset": "d", "arch": arch, "seed": seed, "step": 10.0 * (i + 1), "epoch": 0.0,
             "train_loss": 0.0, "val_miou": v, "val_miou_nobg": v / 2, "seconds": seconds}
            for seed, values in curves.items() for i, v in enumerate(values)]


def test_plateau_table_on_hand_made_curves():
    # seed-mean curve 0.1 0.3 0.5 0.6 0.6 0.605 0.6 0.605 (validations at steps 10..80)
    rising = _rows("A", {0: [0.0, 0.2, 0.4, 0.5, 0.5, 0.6, 0.5, 0.6],
                         1: [0.2, 0.4, 0.6, 0.7, 0.7, 0.61, 0.7, 0.61]}, seconds=2.0)
    (row,) = plateau_table(rising, tol=0.01)
    assert row["seeds"] == 2 and row["steps"] == 80
    assert row["val_miou_best"] == pytest.approx(0.605)
    assert row["val_miou_plateau_step"] == 40              # 0.6 >= 0.605 - 0.01 first at step 40
    assert row["val_miou_final"] == pytest.approx(0.605)
    # last quarter (steps 70, 80) minus the quarter before (50, 60): 0.6025 - 0.6025
    assert row["val_miou_last_quarter_rise"] == pytest.approx(0.0, abs=1e-12)
    assert row["val_miou_nobg_best"] == pytest.approx(0.3025)
    assert row["s_per_step"] == pytest.approx(32 / 160) and row["steps_per_s"] == pytest.approx(5.0)
    (still,) = plateau_table(_rows("B", {0: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}))
    assert still["val_miou_plateau_step"] == 80
    assert still["val_miou_last_quarter_rise"] == pytest.approx(0.2)


@pytest.mark.slow
def test_plateau_command_writes_curves_of_every_seed(synth_dir, tmp_path, capsys):
    out = tmp_path / "plateau"
    assert main(["--data", str(synth_dir), "--name", "tiny", "--steps", "3", "--val-every", "2",
                 "--seeds", "0", "1", "--set", "evaluate.image_size=32",
                 "--set", "evaluate.architectures=[FPN]", "--set", "evaluate.batch_size=4",
                 "--workers", "1",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "plateau_tiny.csv").open()))
    assert [(r["arch"], r["seed"], r["step"]) for r in rows] == [
        ("FPN", "0", "2.0"), ("FPN", "0", "3.0"), ("FPN", "1", "2.0"), ("FPN", "1", "3.0")]
    assert all(0.0 <= float(r["val_miou"]) <= 1.0 for r in rows)
    assert (out / "plateau.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny | FPN | 2 |" in capsys.readouterr().out


def test_plateau_table_says_where_auto_would_stop_with_the_calibrations_own_rule():
    """The bench replays the calibration's rule (isdm.evaluation.plateau_rule): the curve of
    tests/test_plateau_rule.py (seed mean min(0.05 j, 0.5), seeds +- 0.01) stops at 180."""
    from isdm.config.calibration import CalibrationConfig

    base = [min(0.05 * j, 0.5) for j in range(1, 41)]
    rows = _rows("A", {0: [v + 0.01 for v in base], 1: [v - 0.01 for v in base]})
    (row,) = plateau_table(rows, calibration=CalibrationConfig(check_every=2))
    assert (row["auto_steps"], row["auto_reason"]) == (180, "plateau")
    (short,) = plateau_table(rows[:7] + rows[40:47], calibration=CalibrationConfig(check_every=2))
    assert (short["auto_steps"], short["auto_reason"]) == (None, "not within the curves")
