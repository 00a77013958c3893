"""The GPU check (issue 27): on a fresh GPU machine, set isdm up, run the CUDA tests,
``make bench-gpu`` and the embedded pipeline on CUDA with the GPU recipe (configs/gpu.yaml),
timing every phase, each under its own time cap, and write every result under ONE folder.

    scripts/gpu_check.sh [--tiny] [--out DIR] [--budget-s 450] [--only PHASES] [--set K=V ...]

Phases, in order (a failing or timed-out phase is recorded and the next one runs):

  setup      reuse a ready environment, else ``make setup`` where a package index answers, else
             scripts/setup_offline.py (the image's torch + carried wheels; no index needed)
  env        nvidia-smi, torch / CUDA / GPU facts, package versions (env.json)
  gpu_tests  ``pytest -m gpu tests`` (junit XML; skipped tests on a machine without CUDA)
  bench_gpu  ``make bench-gpu`` (training images/s, sampling s/image, original preset, 256 px)
  pipeline   config (params.yaml + configs/gpu.yaml, resolved), data, train, finetune, sample,
             curate, evaluate: the dvc.yaml stages as isdm commands; a stage runs when the
             files it reads exist (a train stopped at its cap still leaves best.pt)

``--tiny`` rehearses all of it on the CPU at tiny sizes (tests/test_gpu_check.py runs it): the
offline set-up into a fresh venv, the CUDA tests (skipped), bench-gpu ``--tiny``, the pipeline at
32 px. Results (at most 8 files, as the device tool brings back; docs/guide/gpu.md): stage_times.json,
summary.md, gpu_bench.json, report.md, grid.png, results.tar.gz (logs, env.json, the merged
params, junit XML, the stages' small outputs). Standard library only: it runs before set-up.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import gpu_check_report as report

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_RC = 124  # as coreutils' timeout
# seconds; the budget (--budget-s) bounds everything after setup; setup has its own cap
# (the H100 estimates behind them: docs/guide/gpu.md "Phases")
CAPS = {"setup": 90, "setup_make": 900, "env": 30, "gpu_tests": 90, "bench_gpu": 150,
        "pipeline.config": 30, "pipeline.data": 30, "pipeline.train": 90,
        "pipeline.finetune": 40, "pipeline.sample": 40, "pipeline.curate": 45,
        "pipeline.evaluate": 170}
BENCH_BUDGET_S = 90  # bench-gpu's own --budget-s (its wall time is ~25 s more: model builds)
PHASES = ("setup", "env", "gpu_tests", "bench_gpu", "pipeline")

# --- The recipe, in ONE place. Today load_config reads one file, so the pipeline's config is
# params.yaml + configs/gpu.yaml (+ the sets below), resolved by isdm into <work>/params.yaml
# (stage pipeline.config) and every stage gets `-c <work>/params.yaml`. With layered configs,
# replace pipeline_config_args() by ["-c", "params.yaml", "-c", "configs/gpu.yaml", *sets].
RECIPE = "configs/gpu.yaml"
CHECK_SETS = ["tracking.enabled=false",  # the device image has no mlflow; timings without it
              "runtime.progress=false"]
GPU_SETS = ["runtime.device=cuda"]
# the CPU rehearsal: configs/tiny.yaml's sizes (its model preset spelt out: params.yaml names
# every size key of the default preset), fp32 (bf16 autocast is slow on most CPUs)
TINY_SETS = ["runtime.device=cpu", "model.preset=tiny", "model.channel_mult=[1, 1]",
             "model.attention_resolutions=[]", "data.image_size=32", "synth.image_size=32",
             "synth.num_train=8", "synth.num_test=4", "train.batch_size=4", "train.max_steps=2",
             "finetune.batch_size=4", "finetune.max_steps=1", "sample.num_samples=4",
             "sample.batch_size=4", "sample.steps=3", "evaluate.architectures=[FPN]",
             "evaluate.seeds=[0]", "evaluate.steps=2", "evaluate.val_every=1",
             "evaluate.image_size=32", "evaluate.batch_size=4", "evaluate.bootstrap=100",
             "curate.min_fidelity=0",  # a 2-step scorer may reject every pair; the rehearsal
             # runs the machinery, so evaluate always gets a curated set to read
             *[f"{s}.precision=fp32" for s in ("train", "finetune", "sample", "evaluate")]]


def pipeline_config_args(work: Path) -> list[str]:
    return ["-c", str(work / "params.yaml")]


def pipeline_stages(work: Path, py: str) -> list[tuple[str, list[str], list[Path], Path]]:
    """``(name, command, files it reads, folder it writes)`` per stage: dvc.yaml's commands
    (paths under ``work/pipeline``), after the stage that writes the merged config."""
    p, c = work / "pipeline", pipeline_config_args(work)
    isdm = [str(Path(py).with_name("isdm"))]  # the venv's console script
    synth, sdm, ft = p / "synth", p / "models" / "sdm", p / "models" / "sdm_ft"
    syn, cur, ev = p / "synthetic", p / "curated", p / "evaluate"
    return [
        ("pipeline.data", [*isdm, "data", "synth", str(synth), *c], [], synth),
        ("pipeline.train", [*isdm, "train", *c, "--data", str(synth), "--out", str(sdm)],
         [synth], sdm),
        ("pipeline.finetune", [*isdm, "finetune", *c, "--data", str(synth), "--init",
                               str(sdm / "best.pt"), "--out", str(ft)], [sdm / "best.pt"], ft),
        ("pipeline.sample", [*isdm, "sample", *c, "--data", str(synth), "--checkpoint",
                             str(ft / "best.pt"), "--out", str(syn)], [ft / "best.pt"], syn),
        ("pipeline.curate", [*isdm, "curate", *c, "--data", str(synth), "--synthetic", str(syn),
                             "--out", str(cur)], [syn / "manifest.jsonl"], cur),
        # progress on: the log then counts the cells done, even if the cap stops the stage
        ("pipeline.evaluate", [*isdm, "evaluate", *c, "--set", "runtime.progress=true",
                               "--data", str(synth), "--synthetic", f"synthetic={syn}",
                               "--synthetic", f"curated={cur}", "--out", str(ev)],
         [syn / "manifest.jsonl", cur / "manifest.jsonl"], ev),
    ]


# ----------------------------------------------------------------------------- running a phase
def _pump(pipe: Any, log: Any) -> None:
    """Copy the child's output to its log and to our stdout (the device tool keeps the tail)."""
    for chunk in iter(lambda: pipe.read1(1 << 16), b""):
        log.write(chunk)
        log.flush()
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (make -> python ...), SIGKILL 10 s later."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(cmd: list[str], log: Path, cap_s: float, env: dict[str, str]) -> int:
    """Run ``cmd`` in the repository root in its own process group, output to ``log`` and
    stdout; killed after ``cap_s`` seconds (returns :data:`TIMEOUT_RC` then)."""
    with open(log, "ab") as f:
        f.write(f"$ {shlex.join(cmd)}\n".encode())
        f.flush()
        # a process group, not a new session: what the device tool ends with us ends with us
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=os.setpgrp)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=max(cap_s, 1))
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = TIMEOUT_RC
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see _on_signal): the group goes too
            _kill(proc)
            raise
        finally:
            pump.join(timeout=5)
    return rc


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far: a phase's share
    tells a CPU-bound phase (data loading, process start) from a GPU-bound one."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: the running phase's group is killed, the results are written."""
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------- the check
class Check:
    """The phases of one run; ``self.record`` is what stage_times.json holds."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.tiny = args, args.tiny
        self.out = Path(args.out).absolute()
        self.work = Path(args.work).absolute()
        self.venv = Path(args.venv).absolute()
        self.py = str(self.venv / "bin" / "python")
        self.logs = self.work / "logs"
        if not args.only:  # a whole run starts clean: only what the check itself writes
            for path in [*(self.work / n for n in report.WORK_FILES),
                         *(self.out / n for n in report.OUT_FILES)]:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        for d in (self.out, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.record = report.start_record(self.work, "tiny" if self.tiny else "full", args)
        self.deadline = float("inf")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                    "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def selected(self, name: str) -> bool:
        """``name`` is in ``--only`` (or none given), or is part of / holds a named phase."""
        return not self.args.only or any(
            name == o or name.startswith(o + ".") or o.startswith(name + ".")
            for o in self.args.only)

    def phase(self, name: str, cmd: Optional[list[str]], cap_s: float, note: str = "",
              skip: str = "") -> int:
        """Run one phase (or record why it is skipped), record it, refresh the results."""
        cap_s *= self.args.cap_scale
        left = self.deadline - time.monotonic()
        cap = min(cap_s, left)
        if not skip and cmd is not None and left < 5:
            skip = "no time left in --budget-s"
        entry: dict[str, Any] = {"cap_s": round(cap_s), "log": f"logs/{name}.log"}
        print(f"\n===== gpu-check {name} (cap {max(cap, 0):.0f} s) {note}", flush=True)
        if skip:
            entry.update(status="skipped", rc=None, seconds=0.0, note=skip)
            print(f"===== {name}: skipped: {skip}", flush=True)
        elif cmd is None:  # nothing to run (an environment reused): done
            entry.update(status="ok", rc=0, seconds=0.0, note=note)
            print(f"===== {name}: ok: {note}", flush=True)
        else:
            start, cpu = time.monotonic(), _children_cpu_s()
            try:
                rc = run_logged(cmd, self.logs / f"{name}.log", cap, self.env)
            except KeyboardInterrupt:
                entry.update(status="interrupted", rc=None, note=note,
                             seconds=round(time.monotonic() - start, 2))
                self.record["phases"][name] = entry
                raise
            entry.update(rc=rc, seconds=round(time.monotonic() - start, 2),
                         cpu_s=round(_children_cpu_s() - cpu, 2), note=note,
                         status="ok" if rc == 0 else "timeout" if rc == TIMEOUT_RC else "failed")
            print(f"===== {name}: {entry['status']} (rc {rc}) in {entry['seconds']:.1f} s",
                  flush=True)
        self.record["phases"][name] = entry
        report.refresh(self.record, self.work, self.out)
        return entry["rc"] if entry["rc"] is not None else 0

    # ------------------------------------------------------------------------- phases
    def venv_ready(self) -> bool:
        """The venv imports torch, smp and THIS checkout's isdm, and has the isdm command."""
        if not Path(self.py).exists() or not Path(self.py).with_name("isdm").exists():
            return False
        code = "import torch, segmentation_models_pytorch, yaml, pytest, isdm; print(isdm.__file__)"
        out = subprocess.run([self.py, "-c", code], capture_output=True, text=True, env=self.env)
        return out.returncode == 0 and out.stdout.strip().startswith(str(REPO / "src"))

    def index_reachable(self) -> bool:
        """Whether pip reaches a package index (a 5 s probe; the device machine has none)."""
        with tempfile.TemporaryDirectory() as tmp:
            probe = [self.args.python, "-m", "pip", "download", "--quiet", "--no-deps",
                     "--retries", "0", "--timeout", "5", "--disable-pip-version-check",
                     "-d", tmp, "pip"]
            try:
                return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
            except subprocess.TimeoutExpired:
                return False

    def setup(self) -> None:
        mode = self.args.setup
        if mode == "none" or mode == "auto" and self.venv_ready():
            self.phase("setup", None, 0, note=f"{self.venv} used as it is" if mode == "none"
                       else f"reused {self.venv} (ready)")
            return
        if mode == "auto":
            mode = "offline" if self.tiny or not self.index_reachable() else "make"
        if mode == "make":  # the project's own set-up: a venv with the pinned stack
            cmd = ["make", "setup", f"VENV={self.venv}", f"PYTHON={self.args.python}"]
            self.phase("setup", cmd, CAPS["setup_make"], note="make setup (index reachable)")
            return
        cmd = [self.args.python, str(REPO / "scripts" / "setup_offline.py"), "--venv",
               str(self.venv), "--wheels", str(Path(self.args.wheels).absolute())]
        self.phase("setup", cmd, CAPS["setup"],
                   note=f"offline: {self.args.python}'s packages + {self.args.wheels}/*.whl")

    def fresh(self, *names: str) -> None:
        """Remove the work folder's ``names`` before the phase that writes them runs: a phase
        that fails must not leave an earlier run's file to be reported as its own."""
        for name in names:
            (self.work / name).unlink(missing_ok=True)

    def env_info(self) -> None:
        self.fresh("env.json")
        cmd = [self.py, str(REPO / "scripts" / "gpu_check_venv.py"), "env-info",
               str(self.work / "env.json"), *([] if self.tiny else ["--require-cuda"])]
        self.phase("env", cmd, CAPS["env"])

    def gpu_tests(self) -> None:
        # the rehearsal collects only test_gpu.py (where every gpu test lives today): the whole
        # suite's collection costs ~10 s of a CPU that has nothing to run
        self.fresh("gpu_tests.xml")
        where = "tests/test_gpu.py" if self.tiny else "tests"
        # a module that fails to import (torch 2.11 on the image) must not stop the others
        cmd = [self.py, "-m", "pytest", "-q", "-m", "gpu", where, "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={self.work / 'gpu_tests.xml'}"]
        note = "" if not self.tiny else "CPU rehearsal: every CUDA test skips"
        self.phase("gpu_tests", cmd, CAPS["gpu_tests"], note=note)

    def bench_gpu(self) -> None:
        self.fresh("gpu_bench.json")
        out = self.work / "gpu_bench.json"
        args = (["--tiny", "--budget-s", "8", "--max-batch", "2"] if self.tiny
                else ["--budget-s", str(self.args.bench_budget_s)]) + ["--out", str(out)]
        if shutil.which("make"):  # -o: the setup phase did the set-up; make must not redo it
            cmd = ["make", "--no-print-directory", "-o", f"{self.venv}/.installed", "bench-gpu",
                   f"VENV={self.venv}", f"BENCH_GPU_ARGS={shlex.join(args)}"]
            note = "tiny preset, 32 px, on the CPU" if self.tiny else ""
        else:  # the Makefile's bench-gpu recipe, as it runs it
            cmd = [self.py, "-m", "isdm.bench.gpu_bench", "--out", "bench/gpu.json", *args]
            note = "no make here: the bench-gpu recipe run directly"
        self.phase("bench_gpu", cmd, CAPS["bench_gpu"], note=note)

    def pipeline(self) -> None:
        (self.work / "pipeline").mkdir(parents=True, exist_ok=True)
        # every pipeline run (also an --only rerun) resolves the config afresh: --set applies
        self.fresh("params.yaml")
        sets = CHECK_SETS + (TINY_SETS if self.tiny else GPU_SETS) + self.args.set
        cmd = [self.py, str(REPO / "scripts" / "gpu_check_venv.py"), "merge-config",
               str(self.work / "params.yaml"), self.args.params, "--overlay", RECIPE,
               *[a for s in sets for a in ("--set", s)]]
        self.phase("pipeline.config", cmd, CAPS["pipeline.config"],
                   note=f"{self.args.params} + {RECIPE}")
        for name, cmd, needs, out in pipeline_stages(self.work, self.py):
            if not self.selected(name):
                continue
            missing = [str(p) for p in [self.work / "params.yaml", *needs] if not p.exists()]
            if not missing:  # a stage starts clean: no output of an earlier run is reported
                shutil.rmtree(out, ignore_errors=True)
            self.phase(name, cmd, CAPS[name],
                       skip=f"missing {', '.join(missing)}" if missing else "")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _on_signal)
        try:
            self.setup()  # always: a rerun with --only finds the environment ready
            self.deadline = time.monotonic() + self.args.budget_s
            for name, step in (("env", self.env_info), ("gpu_tests", self.gpu_tests),
                               ("bench_gpu", self.bench_gpu), ("pipeline", self.pipeline)):
                if self.selected(name):
                    step()
        except KeyboardInterrupt as e:
            self.record["interrupted"] = str(e) or "interrupted"
            print(f"\ngpu-check: interrupted ({self.record['interrupted']})", flush=True)
        return report.finish(self.record, self.work, self.out)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal at tiny sizes")
    parser.add_argument("--out", default=None,
                        help="result folder (default: $OUT when set, else gpu_results)")
    parser.add_argument("--work", default=None,
                        help="scratch folder: logs, pipeline outputs (default: <out>/work; "
                             "/tmp/isdm-gpu-check when --out is $OUT, which brings back 8 files)")
    parser.add_argument("--venv", default=None,
                        help="environment to set up or reuse (default: .venv; <work>/venv with "
                             "--tiny)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose packages an offline set-up builds on (default: "
                             "this one; scripts/gpu_check.sh runs $PYTHON or python3)")
    parser.add_argument("--wheels", default=str(REPO / ".whl"),
                        help="wheels for an offline set-up (scripts/gpu_wheels.sh)")
    parser.add_argument("--setup", choices=("auto", "offline", "make", "none"), default="auto")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for every phase after setup (default 450; 900 with --tiny)")
    parser.add_argument("--bench-budget-s", type=float, default=BENCH_BUDGET_S)
    parser.add_argument("--cap-scale", type=float, default=None,
                        help="multiply every phase's cap (default 1; 4 with --tiny: a shared "
                             "CPU is slower than the GPU the caps are set for)")
    parser.add_argument("--params", default="params.yaml", help="the base config")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated phases ({', '.join(PHASES)}) or pipeline stages "
                             "(pipeline.train, ...), e.g. a rerun of what failed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra pipeline override, after the recipe (repeatable)")
    args = parser.parse_args(argv)
    env_out = os.environ.get("OUT")
    args.out = args.out or env_out or str(REPO / "gpu_results")
    if args.work is None:
        at_out = env_out and Path(args.out).absolute() == Path(env_out).absolute()
        args.work = "/tmp/isdm-gpu-check" if at_out else str(Path(args.out) / "work")
    args.venv = args.venv or str(Path(args.work) / "venv" if args.tiny else REPO / ".venv")
    args.budget_s = args.budget_s or (900.0 if args.tiny else 450.0)
    args.cap_scale = args.cap_scale or (4.0 if args.tiny else 1.0)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    return Check(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
