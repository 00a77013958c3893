"""Training protocols (evaluate.protocol / pretrain_split / synthetic_share / protocols): the
codes, the batch streams, a cell's budget (the baseline's steps), its first phase (synthetic
images only), determinism for a seed, bit-identical resume across the phase boundary, the cell
key, and one report row per protocol paired with the real-only baseline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from isdm.config import load_config
from isdm.errors import ConfigError, EvaluationError
from isdm.evaluation.protocols import (
    MIX,
    PretrainStream,
    Protocol,
    ShareStream,
    parse_protocol,
    protocol_of,
    row_protocols,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _cfg(*overrides: str):
    return load_config(TINY, ["tracking.enabled=false", "evaluate.batch_size=4",
                              "evaluate.val_every=2", "evaluate.steps=6", *overrides])


# ----------------------------------------------------------------------------------------------
# codes and config
# ----------------------------------------------------------------------------------------------

def test_codes_parse_strictly_and_print_canonically():
    assert parse_protocol("mix") is MIX and MIX.code == "mix"
    assert parse_protocol(" share 0.250 ").code == "share 0.25"
    assert parse_protocol("pretrain .5") == Protocol("pretrain", 0.5)
    for bad in ("pretrain", "share 0", "share 1", "pretrain 1.5", "mix 0.5", "Mix", "x", 3):
        with pytest.raises(EvaluationError, match="expected 'mix', 'share Q'"):
            parse_protocol(bad)
    cfg = _cfg("evaluate.protocol=pretrain", "evaluate.pretrain_split=0.25",
               "evaluate.protocols=[share 0.5, pretrain 0.25, mix]")
    assert protocol_of(cfg.evaluate).code == "pretrain 0.25"
    assert row_protocols(cfg.evaluate) == ["pretrain 0.25", "share 0.5", "mix"]
    assert protocol_of(_cfg("evaluate.synthetic_share=0.5").evaluate).code == "share 0.5"
    assert protocol_of(_cfg().evaluate) is not None and row_protocols(_cfg().evaluate) == ["mix"]


def test_config_refuses_bad_protocol_values():
    for override, match in [("evaluate.protocols=[share 2]", "must be 'mix', 'share Q'"),
                            ("evaluate.pretrain_split=1.0", "pretrain_split"),
                            ("evaluate.protocol=finetune", "not one of"),
                            ("evaluate.synthetic_share=1", "synthetic_share")]:
        with pytest.raises(ConfigError, match=match):
            _cfg(override)
    # a share belongs to protocol mix; pretrain does not use it
    assert protocol_of(_cfg("evaluate.protocol=pretrain", "evaluate.synthetic_share=0.25")
                       .evaluate).code == "pretrain 0.5"
    with pytest.raises(EvaluationError, match="more than once"):
        row_protocols(_cfg("evaluate.protocols=[share 0.5, share 0.50]").evaluate)


# ----------------------------------------------------------------------------------------------
# the batch streams
# ----------------------------------------------------------------------------------------------

def _draw(stream, n: int) -> list[list[int]]:
    return [stream.next().tolist() for _ in range(n)]


def test_pretrain_stream_serves_synthetic_batches_then_real_ones_and_resumes():
    n_real, n_syn, batch, switch = 5, 3, 4, 3
    straight = PretrainStream(n_real, n_syn, batch, switch, torch.Generator().manual_seed(7))
    batches = _draw(straight, 6)
    assert all(n_real <= i < n_real + n_syn for b in batches[:switch] for i in b)
    assert all(0 <= i < n_real for b in batches[switch:] for i in b)
    assert all(len(b) == batch for b in batches)
    g = torch.Generator().manual_seed(7)
    first = PretrainStream(n_real, n_syn, batch, switch, g)
    head = _draw(first, 2)
    state, g_state = first.state_dict(), g.get_state()
    g2 = torch.Generator()
    g2.set_state(g_state)
    resumed = PretrainStream(n_real, n_syn, batch, switch, g2)
    resumed.load_state_dict(state)
    assert head + _draw(resumed, 4) == batches  # resumed across the boundary (after step 3)


def test_share_stream_puts_its_share_in_every_batch_from_its_own_seeded_stream():
    n_real, n_syn = 6, 5
    a = ShareStream(n_real, n_syn, 3, 1, torch.Generator().manual_seed(0), seed=4)
    b = ShareStream(n_real, n_syn, 3, 1, torch.Generator().manual_seed(0), seed=4)
    batches = _draw(a, 8)
    assert batches == _draw(b, 8)  # deterministic for a seed
    assert all(len(x) == 4 and all(i < n_real for i in x[:3]) and x[3] >= n_real for x in batches)
    # the synthetic order is its own stream: the real generator's seed does not change it
    c = ShareStream(n_real, n_syn, 3, 1, torch.Generator().manual_seed(99), seed=4)
    assert [x[3] for x in _draw(c, 8)] == [x[3] for x in batches]
    assert sorted(x[3] - n_real for x in batches[:5]) == list(range(n_syn))  # a permutation
    assert Protocol("mix", 0.25).batch_split(8) == (6, 2)


# ----------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------

def _sets(cfg, data_root: Path):
    from isdm.evaluation.loading import load_split
    from isdm.evaluation.segmenter import TensorSet

    real = load_split(cfg, data_root, "train")
    synth = TensorSet(real.images[:4].flip(-1), real.labels[:4].flip(-1),
                      [f"syn{i}" for i in range(4)])
    return real, synth


def _run(cfg, data_root: Path, protocol, mix: str = "RALLFALL"):
    from isdm.evaluation.cell import CellRun, plan_cell

    real, synth = _sets(cfg, data_root)
    cell = plan_cell(cfg, "FPN", mix, 0, real.keys, synth.keys, "synthetic", protocol)
    return CellRun(cfg, cell, real, synth, device=torch.device("cpu"))


def _spy(run) -> list[tuple[int, list[str]]]:
    """Record the keys of every training batch of ``run``."""
    seen: list[tuple[int, list[str]]] = []
    train, batch = run.loop.train, run.loop.train.batch

    def spy(idx, step):
        seen.append((step, [train.keys[i] for i in idx.tolist()]))
        return batch(idx, step)

    train.batch = spy
    return seen


def _same_fit(a, b) -> None:
    fa, fb = a.fit, b.fit
    assert (fa.best_step, fa.best_val_miou, fa.steps) == (fb.best_step, fb.best_val_miou, fb.steps)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in fa.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in fb.history]
    assert all(torch.equal(fa.state_dict[k], fb.state_dict[k]) for k in fa.state_dict)


def test_a_pretrain_cell_trains_the_baselines_steps_on_synthetic_images_first(synth_dir):
    torch.set_num_threads(1)
    cfg = _cfg("evaluate.steps=4", "evaluate.val_every=4", "evaluate.pretrain_split=0.75")
    run = _run(cfg, synth_dir, None)  # the config's protocol: evaluate.protocol etc.
    assert run.cell.protocol.code == "mix"
    cfg = _cfg("evaluate.steps=4", "evaluate.val_every=4", "evaluate.protocol=pretrain",
               "evaluate.pretrain_split=0.75")
    run = _run(cfg, synth_dir, None)
    assert run.cell.label == "RALLFALL[synthetic] pretrain 0.75"
    seen = _spy(run)
    run.advance(4)
    fit = run.finish().fit
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert all(k.startswith("syn") for _, keys in seen[:3] for k in keys)  # phase 1: synthetic only
    assert all(not k.startswith("syn") for _, keys in seen[3:] for k in keys)  # phase 2: real only
    baseline = _run(cfg, synth_dir, None, mix="RALLF000")
    baseline.advance(4)
    base = baseline.finish().fit
    assert fit.steps == base.steps == cfg.evaluate.steps == 4
    assert [h["step"] for h in fit.history] == [h["step"] for h in base.history] == [4.0]
    assert fit.images_seen == base.images_seen


@pytest.mark.parametrize("protocol, k", [
    # saved in the synthetic phase, resumed across the boundary (step 3); the stream's resume:
    # test_pretrain_stream_serves_synthetic_batches_then_real_ones_and_resumes
    pytest.param("pretrain 0.5", 2, marks=pytest.mark.slow),
    pytest.param("pretrain 0.5", 4, marks=pytest.mark.slow),  # saved after it
    pytest.param("share 0.5", 3, marks=pytest.mark.slow)])
def test_protocol_cells_resume_bit_identically(synth_dir, protocol, k):
    torch.set_num_threads(1)
    cfg = _cfg()
    straight = _run(cfg, synth_dir, protocol)
    straight.advance(6)
    first = _run(cfg, synth_dir, protocol)
    first.advance(k)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = _run(cfg, synth_dir, protocol)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.step == k
    resumed.advance(6)
    _same_fit(straight.finish(), resumed.finish())


@pytest.mark.slow
def test_a_share_cell_is_deterministic_and_holds_its_share_in_every_batch(synth_dir):
    torch.set_num_threads(1)
    cfg = _cfg()
    runs = [_run(cfg, synth_dir, "share 0.25") for _ in range(2)]
    seen = _spy(runs[0])
    for run in runs:
        run.advance(6)
    _same_fit(runs[0].finish(), runs[1].finish())
    assert all([k.startswith("syn") for k in keys] == [False, False, False, True]
               for _, keys in seen)
    mixed = _run(cfg, synth_dir, "mix")
    mixed.advance(6)
    assert not all(torch.equal(a, b) for a, b in zip(
        mixed.finish().fit.state_dict.values(), runs[0].finish().fit.state_dict.values()))


def test_plan_cell_refuses_a_protocol_that_cannot_train_the_mix(synth_dir):
    from isdm.evaluation.cell import plan_cell

    cfg = _cfg()
    real = [f"r{i}" for i in range(8)]
    syn = [f"s{i}" for i in range(4)]
    with pytest.raises(EvaluationError, match="0 synthetic and 4 real"):
        plan_cell(cfg, "FPN", "RALLFALL", 0, real, syn, "synthetic", "share 0.1")
    with pytest.raises(EvaluationError, match="needs real AND synthetic"):
        plan_cell(cfg, "FPN", "R000FALL", 0, real, syn, "synthetic", "pretrain 0.5")
    with pytest.raises(EvaluationError, match="leaves each phase at least one step"):
        plan_cell(_cfg("evaluate.steps=1"), "FPN", "RALLFALL", 0, real, syn, "s", "pretrain 0.5")
    base = plan_cell(_cfg("evaluate.protocol=pretrain"), "FPN", "RALLF000", 0, real, syn)
    assert base.protocol is MIX and base.label == "RALLF000"  # real-only cells train as mix
    cell = plan_cell(_cfg("evaluate.protocol=pretrain"), "FPN", "RALLFALL", 0, real, syn, "x")
    assert cell.label == "RALLFALL[x] pretrain 0.5"


def test_the_protocol_joins_the_cell_key_and_leaves_mix_keys_as_they_were():
    from isdm.evaluation.spec import cell_spec

    cfg = _cfg()
    mix = cell_spec(cfg, "FPN", "RALLFALL", 0, real="r", synthetic="s")
    assert "protocol" not in mix.identity()  # records written before protocols keep their keys
    pre = cell_spec(cfg, "FPN", "RALLFALL", 0, real="r", synthetic="s", protocol="pretrain .5")
    assert pre.identity()["protocol"] == "pretrain 0.5" and pre.key != mix.key
    assert "pretrain" in pre.describe()
    base = cell_spec(cfg, "FPN", "RALLF000", 0, real="r", protocol="pretrain 0.5")
    assert base == cell_spec(cfg, "FPN", "RALLF000", 0, real="r")
    # the protocol keys are not in the recipe: switching evaluate.protocol re-keys only the
    # cells that train with synthetic images
    other = _cfg("evaluate.protocol=pretrain", "evaluate.protocols=[share 0.5]")
    assert cell_spec(other, "FPN", "RALLF000", 0, real="r") == base
    assert cell_spec(other, "FPN", "RALLFALL", 0, real="r", synthetic="s").key == mix.key


# ----------------------------------------------------------------------------------------------
# the report: one row per protocol, paired with the baseline
# ----------------------------------------------------------------------------------------------

def _synthetic_folder(dataset: Path, out: Path, n: int = 4) -> Path:
    import shutil

    (out / "samples").mkdir(parents=True)
    (out / "labels").mkdir()
    for img in sorted((dataset / "train" / "images").iterdir())[:n]:
        mask = next((dataset / "train" / "masks").glob(img.stem + ".*"))
        shutil.copy(img, out / "samples" / f"syn_{img.name}")
        shutil.copy(mask, out / "labels" / f"syn_{mask.name}")
    return out


def test_report_rows_add_each_protocol_per_set_after_the_sets_main_one():
    from isdm.evaluation.run import report_rows

    assert report_rows(["RALLF000", "RALLFALL"], ["a", "b"]) == [
        ("RALLF000", "", "mix"), ("RALLFALL", "a", "mix"), ("RALLFALL", "b", "mix")]
    rows = report_rows(["RALLF000", "RALLFALL"], ["a", "b"], ["mix", "pretrain 0.5"],
                       {"b": "pretrain 0.5"})
    assert rows == [("RALLF000", "", "mix"), ("RALLFALL", "a", "mix"),
                    ("RALLFALL", "a", "pretrain 0.5"), ("RALLFALL", "b", "pretrain 0.5")]
    from isdm.evaluation.summary import reference_row

    assert reference_row(rows, rows[3], "a") == rows[1]  # b's main row vs a's main row
    rows = report_rows(["RALLF000", "RALLFALL"], ["a", "b"], ["mix", "share 0.5"])
    assert reference_row(rows, rows[4], "a") == rows[2]  # b share vs a share


@pytest.mark.slow
def test_evaluate_reports_a_row_per_protocol_with_its_paired_gain(synth_dir, tmp_path):
    from isdm.evaluation import run_evaluation

    syn = _synthetic_folder(synth_dir, tmp_path / "syn")
    cfg = _cfg("evaluate.steps=2", "evaluate.val_every=1", "evaluate.bootstrap=20",
               "evaluate.seeds=[0,1]", "evaluate.workers=1", "evaluate.threads=1",
               "evaluate.protocols=[pretrain 0.5, share 0.5]")
    res = run_evaluation(cfg, synth_dir, {"synthetic": syn}, tmp_path / "out", progress=False,
                         device="cpu")
    labels = ["RALLF000", "RALLFALL[synthetic]", "RALLFALL[synthetic] pretrain 0.5",
              "RALLFALL[synthetic] share 0.5"]
    summary = res["summary"]
    assert list(summary["overall"]) == labels
    for label in labels[1:]:
        assert {"gain", "gain_lo", "gain_hi", "verdict"} <= set(summary["overall"][label])
    head = res["headline"]
    assert {"miou_gain_pretrain_0.5", "miou_gain_pretrain_0.5_lo", "miou_gain_share_0.5_hi",
            "miou_gain"} <= set(head)
    assert head["miou_gain_pretrain_0.5"] == summary["overall"][labels[2]]["gain"]
    cells = res["cells"]
    assert [c["protocol"] for c in cells if c["seed"] == 0] == ["mix", "mix", "pretrain 0.5",
                                                               "share 0.5"]
    assert {c["steps"] for c in cells} == {2}  # every row trains the baseline's steps
    assert summary["budget"]["rows"][labels[2]]["protocol"] == "pretrain 0.5"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| RALLFALL[synthetic] share 0.5 |" in report and "`pretrain p` trains" in report
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"][2] == ["RALLFALL", "synthetic", "pretrain 0.5"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("protocol", ["pretrain 0.5", "share 0.5"])
def test_protocol_cells_train_on_cuda_and_resume_across_the_boundary(synth_dir, protocol):
    from isdm.evaluation.cell import CellRun, plan_cell

    cfg = _cfg("evaluate.steps=4")
    real, synth = _sets(cfg, synth_dir)
    cell = plan_cell(cfg, "FPN", "RALLFALL", 0, real.keys, synth.keys, "synthetic", protocol)
    run = CellRun(cfg, cell, real, synth, device=torch.device("cuda"))
    assert run.loop.train.images.device.type == "cuda"  # the mix lives on the device
    seen = _spy(run)
    run.advance(1)  # saved in the synthetic phase of pretrain
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    buf.seek(0)
    again = CellRun(cfg, cell, real, synth, device=torch.device("cuda"))
    again.load_state_dict(torch.load(buf, weights_only=True))
    seen += _spy(again)
    again.advance(4)
    fit = again.finish().fit
    assert fit.steps == 4 and [s for s, _ in seen] == [1, 2, 3, 4]
    if protocol.startswith("pretrain"):
        assert [all(k.startswith("syn") for k in keys) for _, keys in seen] == [
            True, True, False, False]
    else:
        assert all(sum(k.startswith("syn") for k in keys) == 2 for _, keys in seen)
