"""The Gaussian diffusion process of DDPM / improved DDPM, with eps prediction and learned-range
variance (Ho et al. 2020; Nichol & Dhariwal 2021).

Tables are float64 numpy arrays ``[T]``; they are gathered at ``t`` and cast to the dtype of the
image tensor on use. The process knows nothing about the network: every method that needs one
takes either the model OUTPUT tensor or ``model_fn(x_t, t) -> output``.

Model output layout: ``[B, 3, H, W]`` (eps only; fixed "large" variance) or ``[B, 6, H, W]``
(eps + variance interpolation ``f'`` in [-1, 1]):
    log sigma_t^2 = f log beta_t + (1 - f) log beta~_t,  f = (f' + 1) / 2    (improved DDPM eq. 15)

With ``prediction="v"`` the first 3 channels are v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
(Salimans & Ho 2022) instead; :meth:`GaussianDiffusion.eps_output` turns a raw network output
into the eps form above, and everything downstream (losses, posterior, solvers) sees only that.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from isdm.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl

__all__ = ["GaussianDiffusion", "ModelFn"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mean_flat(x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over all non-batch dimensions: ``[B, C, H, W] -> [B]``; with ``valid`` ``[B, 1, H, W]``
    (1 = a real pixel, 0 = padding) the mean over the valid pixels only:
    ``sum_{c,h,w} v_{h,w} x_{c,h,w} / (C sum_{h,w} v_{h,w})``."""
    if valid is None:
        return x.mean(dim=tuple(range(1, x.ndim)))
    dims = tuple(range(1, x.ndim))
    v = valid.to(x.dtype)
    return (x * v).sum(dim=dims) / (v.sum(dim=dims) * x.shape[1]).clamp(min=1.0)


class GaussianDiffusion:
    """A diffusion chain defined by ``betas`` ``[T]`` (float64, each in (0, 1]).

    Attributes (all float64 numpy ``[T]``): ``betas``, ``alphas_cumprod`` (alpha_bar_t),
    ``alphas_cumprod_prev`` (alpha_bar_{t-1}, 1 at t=0), ``posterior_variance`` (beta~_t),
    ``posterior_log_variance_clipped`` (log beta~_t with t=0 replaced by t=1),
    ``posterior_mean_coef1/2``.
    """

    def __init__(self, betas: np.ndarray, alphas_cumprod: Optional[np.ndarray] = None,
                 prediction: str = "eps") -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"diffusion.prediction={prediction!r}: use 'eps' or 'v'")
        self.prediction = prediction
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # ``alphas_cumprod`` may be given exactly (respacing keeps the original chain's values).
        abar = np.cumprod(1.0 - betas) if alphas_cumprod is None else np.asarray(
            alphas_cumprod, dtype=np.float64)
        if abar.shape != betas.shape:
            raise ValueError("alphas_cumprod must have the same shape as betas")
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = np.append(1.0, abar[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1.0)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t)            (DDPM eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - abar)
        # beta~_0 = 0: clip the log with the t=1 value, as improved DDPM does.
        pv_clip = np.append(self.posterior_variance[1], self.posterior_variance[1:]) \
            if self.num_timesteps > 1 else self.betas.copy()
        self.posterior_log_variance_clipped = np.log(pv_clip)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        )
        # log beta_t of the "large" fixed variance, with t=0 given beta~_1 as in guided-diffusion
        self.log_betas_large = np.log(np.append(pv_clip[0], betas[1:]))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray,
                            prediction: str = "eps") -> "GaussianDiffusion":
        """The chain whose alpha_bar are exactly ``alphas_cumprod`` (decreasing, in (0, 1])."""
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return cls(betas, alphas_cumprod=abar, prediction=prediction)

    def __repr__(self) -> str:
        return f"GaussianDiffusion(T={self.num_timesteps}, prediction={self.prediction!r})"

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _extract(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` as ``[B, 1, 1, 1]`` in ``like``'s dtype/device (gathered in float64)."""
        values = torch.as_tensor(table, dtype=torch.float64, device=t.device)[t.long()]
        return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B]=({x.shape[0]},), got {tuple(t.shape)}")

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (DDPM eq. 4).  ``[B,C,H,W]``."""
        self._check_t(t, x0)
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean ``[B,C,H,W]``, variance and clipped log-variance ``[B,1,1,1]`` of
        q(x_{t-1} | x_t, x0) (DDPM eq. 6-7)."""
        self._check_t(t, x_t)
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x0
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        var = self._extract(self.posterior_variance, t, x_t)
        log_var = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor,
                                eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor,
                                x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1/abar_t - 1)."""
        return ((self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
                / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    def eps_output(self, model_out: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """A raw network output ``[B, C or 2C, H, W]`` in eps form (variance channels unchanged).

        ``prediction="eps"``: returned as is. ``"v"``: the first C channels are v, and
        ``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`` (from x_t = sqrt(abar_t) x0 +
        sqrt(1 - abar_t) eps), ``t`` indexing THIS chain's tables.
        """
        if self.prediction == "eps":
            return model_out
        self._check_t(t, x_t)
        c = x_t.shape[1]
        eps = (self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
               + self._extract(self.sqrt_alphas_cumprod, t, x_t) * model_out[:, :c])
        return torch.cat([eps, model_out[:, c:]], dim=1)

    # ------------------------------------------------------------------ reverse process
    def model_log_variance(self, model_out: torch.Tensor, x_t: torch.Tensor,
                           t: torch.Tensor) -> torch.Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): learned range if the output has the variance
        channels (``[B, 2C, H, W]``), else the fixed "large" variance beta_t."""
        c = x_t.shape[1]
        if model_out.shape[1] == 2 * c:
            frac = (model_out[:, c:] + 1.0) / 2.0
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._extract(np.log(self.betas), t, x_t)
            return frac * max_log + (1.0 - frac) * min_log
        if model_out.shape[1] == c:
            return self._extract(self.log_betas_large, t, x_t).expand_as(x_t)
        raise ValueError(
            f"model output has {model_out.shape[1]} channels; expected {c} (eps) or {2 * c} "
            "(eps + variance interpolation)"
        )

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """Parameters of p(x_{t-1} | x_t) from a model output.

        Args:
            model_out: ``[B, 3 or 6, H, W]`` in eps form (:meth:`eps_output`): eps, then
                (optionally) the variance interpolation.
            x_t: ``[B, 3, H, W]``; t: ``[B]`` indices into THIS chain's tables.
            clip_denoised: clamp the predicted x0 to [-1, 1] before the posterior mean.
        Returns:
            dict with ``mean``, ``variance``, ``log_variance`` (``[B,3,H,W]``), ``pred_xstart``
            and ``eps``.
        """
        self._check_t(t, x_t)
        c = x_t.shape[1]
        eps = model_out[:, :c]
        log_var = self.model_log_variance(model_out, x_t, t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var,
                "pred_xstart": pred_xstart, "eps": eps}

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-sample variational-bound term in bits/dim, ``[B]``: KL(q(x_{t-1}|x_t,x0) ||
        p(x_{t-1}|x_t)) for t > 0 and the discretised Gaussian decoder NLL -log p(x0|x1) at t=0,
        averaged over the ``valid`` pixels (``[B, 1, H, W]``; None = all)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_out, x_t, t, clip_denoised=False)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]),
                        valid)
        nll = -_mean_flat(discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"]), valid)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def training_losses(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor,
                        noise: Optional[torch.Tensor] = None,
                        generator: Optional[torch.Generator] = None,
                        valid: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The hybrid loss of improved DDPM for one random ``t`` per sample.

        With ``valid`` (``[B, 1, H, W]``, 1 = a real pixel, 0 = padding such as a letterbox)
        both terms are means over the valid pixels only, so padding never enters the loss:
        ``mse_b = sum_{c,h,w} v_{b,h,w} (eps - eps_hat)^2_{b,c,h,w} / (C sum_{h,w} v_{b,h,w})``
        and likewise for the per-pixel KL / decoder NLL of ``vb``. ``valid=None`` is the plain
        mean over every pixel (and what callers pass when nothing is padded).

        Args:
            model_fn: ``(x_t [B,3,H,W], t [B]) -> [B, 3 or 6, H, W]``, the raw network output
                (eps or v by ``prediction``; the MSE is on eps either way).
            x0: clean images in [-1, 1]; t: ``[B]`` long in [0, T).
            noise: eps ``[B,3,H,W]``; drawn from ``generator`` if None.
            valid: optional ``[B,1,H,W]`` map of the pixels the loss averages over.
        Returns:
            per-sample ``[B]`` tensors: ``mse`` = mean_pixels (eps - eps_hat)^2, ``vb`` (bits/dim,
            computed with eps_hat DETACHED so it trains only the variance channels; zeros when the
            model has no variance output) and ``loss`` = mse + vb.
        """
        self._check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t)
        c = x0.shape[1]
        if out.shape[0] != x0.shape[0] or out.shape[2:] != x0.shape[2:]:
            raise ValueError(f"model output {tuple(out.shape)} does not match x0 {tuple(x0.shape)}")
        out = self.eps_output(out, x_t, t)
        if valid is not None and valid.shape != (x0.shape[0], 1, *x0.shape[2:]):
            raise ValueError(f"valid must be [B, 1, H, W] = {(x0.shape[0], 1, *x0.shape[2:])}, "
                             f"got {tuple(valid.shape)}")
        mse = _mean_flat((noise - out[:, :c]) ** 2, valid)
        if out.shape[1] == 2 * c:
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t, valid)
        else:
            self.model_log_variance(out, x_t, t)  # raises on a wrong channel count
            vb = torch.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
