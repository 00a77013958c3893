"""The sampling job (``isdm sample``): mask sources, augmentation, class balancing, output
writer and manifest. :func:`run_sampling` is the entry point; importing it loads no torch."""

from isdm.sampling.job import run_sampling

__all__ = ["run_sampling"]
