"""isdm: synthetic data for semantic segmentation via Semantic Diffusion Models."""

__version__ = "0.1.0"
