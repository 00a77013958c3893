"""When a training run writes ``best.pt`` / ``last.pt``: first epoch, then throttled, then the end.

Writing both files after every epoch is ~10 % of a run on the embedded set (an epoch is 5 steps,
a file 46 MB). :class:`Saves` writes after the first epoch, then at most every
:data:`CHECKPOINT_EVERY_S` seconds, and always after the last epoch. A best epoch between two
writes is kept in memory (a deep copy of its state) until the next write, so ``best.pt`` always
holds the best epoch's state and a crash loses at most that many seconds of training. Writes are
atomic replaces (:func:`isdm.training.checkpoint.save`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Optional

from isdm.training import checkpoint

__all__ = ["Saves", "CHECKPOINT_EVERY_S"]

CHECKPOINT_EVERY_S = 60.0  # best.pt / last.pt written at most this often (and at the end)


class Saves:
    """The write schedule of one run's checkpoints in ``out_dir``.

    ``state`` builds the run's checkpoint dict now; ``save_last`` also writes ``last.pt``.
    """

    def __init__(self, out_dir: Path, state: Callable[[], dict[str, Any]], save_last: bool):
        self.out_dir, self.state, self.save_last = out_dir, state, save_last
        self.written_at: Optional[float] = None  # when best/last.pt were last written
        self.pending_best: Optional[dict[str, Any]] = None  # an improved state not yet written

    def after_epoch(self, improved: bool, final: bool) -> None:
        """Write now if due (the first epoch, ``final``, or :data:`CHECKPOINT_EVERY_S` since the
        last write); an improved state that is not written now is kept for the next write."""
        due = (final or self.written_at is None
               or time.monotonic() - self.written_at >= CHECKPOINT_EVERY_S)
        if not due:
            if improved:
                self.pending_best = copy.deepcopy(self.state())
            return
        state = self.state()
        if improved:
            self.pending_best = None
            names = ["best.pt"] + ["last.pt"] * self.save_last
            checkpoint.save(state, *(self.out_dir / name for name in names))
        else:
            if self.pending_best is not None:
                checkpoint.save(self.pending_best, self.out_dir / "best.pt")
                self.pending_best = None
            if self.save_last:
                checkpoint.save(state, self.out_dir / "last.pt")
        self.written_at = time.monotonic()
