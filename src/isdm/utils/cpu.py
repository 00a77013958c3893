"""What the CPU can do fast, and how OpenMP threads should wait on it.

- :func:`native_bf16`: whether bf16 autocast runs on bf16 instructions (x86 AVX512-BF16 or AMX,
  Arm BF16) or on CUDA with bf16 support. Without them oneDNN emulates bf16 and a bf16 step is
  far slower than fp32, so bf16 is recommended only where this is True.
- :func:`wait_policy` / ``python -m isdm.utils.cpu``: ``OMP_WAIT_POLICY`` for a job that
  starts now. Spinning threads (``ACTIVE``) save the wake-up between parallel regions when the job
  has the cores to itself, but burn the time slices other processes need when it does not, and
  every parallel region then waits for its slowest thread: on a busy machine threads sleep
  (``PASSIVE``). What the others use is read from ``/proc/stat`` right now, not from the load
  average, which still counts the previous stage of a pipeline for a minute after it ended. The
  wait policy never changes results; the thread count does (it changes the order of float sums
  in PyTorch's kernels), so it is only suggested, never set.

- :data:`MALLOC_TUNABLES` / :func:`keep_freed_memory`: glibc keeps freed blocks of any size in
  the heap instead of returning them to the kernel (``mmap_threshold`` / ``trim_threshold``), so
  a training step reuses last step's pages instead of faulting in and zeroing fresh ones (a CPU
  segmenter step of FPN: minor page faults halved, system time down by a third, measured).
  Allocation only: results are bit-identical. Read by glibc when a process starts: the Makefile
  and the cell pool set it for the processes they start.

Nothing here imports torch at import time; OpenMP reads the variables when torch is loaded, so
they must be set before (the Makefile sets them for ``make repro`` and ``make bench``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

__all__ = ["native_bf16", "busy_cpus", "wait_policy", "free_cpus", "MALLOC_TUNABLES",
           "keep_freed_memory"]

MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"

# other processes may use this many CPUs (of all) before threads should sleep rather than spin
BUSY_THRESHOLD = 0.25


def native_bf16(device: Any = "cpu") -> bool:
    """True when bf16 arithmetic is native on ``device`` (a ``torch.device`` or its name)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return _cpuinfo_flags() & {"avx512_bf16", "amx_bf16", "bf16"} != set()


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty if unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_times(path: str = "/proc/stat") -> Optional[tuple[int, int]]:
    """``(busy, total)`` jiffies of all CPUs from the first line of ``/proc/stat``."""
    try:
        with open(path) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cpus(interval: float = 0.3, path: str = "/proc/stat") -> Optional[float]:
    """How many CPUs other processes keep busy, averaged over ``interval`` seconds (None where
    ``/proc/stat`` is missing, e.g. macOS or Windows)."""
    first = _cpu_times(path)
    time.sleep(interval)
    second = _cpu_times(path)
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def wait_policy(busy: Optional[float], cpus: int) -> str:
    """``ACTIVE`` when other processes keep less than :data:`BUSY_THRESHOLD` of the ``cpus``
    CPUs busy, ``PASSIVE`` otherwise or when unknown (``busy`` None)."""
    if busy is None:
        return "PASSIVE"
    return "ACTIVE" if busy < BUSY_THRESHOLD * cpus else "PASSIVE"


def free_cpus(busy: Optional[float], cpus: int) -> int:
    """The CPUs other processes leave free (at least 1; all of them when unknown)."""
    return cpus if busy is None else max(1, min(cpus, cpus - round(busy)))


def keep_freed_memory(environ: Any = None) -> None:
    """Set :data:`MALLOC_TUNABLES` in ``environ`` (default ``os.environ``) for the processes
    started from now on, unless ``GLIBC_TUNABLES`` is already set (the user's wins)."""
    env = os.environ if environ is None else environ
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)


def main() -> int:
    """Print ``OMP_WAIT_POLICY=<policy>`` for a job started now (the environment's value when it
    is set); ``--explain`` says why on stderr, and suggests fewer threads on a busy machine."""
    cpus = os.cpu_count() or 1
    busy = busy_cpus()
    policy = os.environ.get("OMP_WAIT_POLICY") or wait_policy(busy, cpus)
    if "--explain" in sys.argv[1:]:
        use = "an unknown number of" if busy is None else f"{busy:.2f} of {cpus}"
        why = "set in the environment" if os.environ.get("OMP_WAIT_POLICY") else "chosen"
        print(f"[isdm] other processes keep {use} CPUs busy: OMP_WAIT_POLICY={policy} ({why})",
              file=sys.stderr)
        free = free_cpus(busy, cpus)
        if free < cpus and not os.environ.get("OMP_NUM_THREADS"):
            print(f"[isdm] OMP_NUM_THREADS={free} would run faster now, but results then differ "
                  f"in their last bits from a run with {cpus} threads; not set", file=sys.stderr)
    print(f"OMP_WAIT_POLICY={policy}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES') or MALLOC_TUNABLES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
