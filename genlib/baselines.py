"""The two baselines every chapter must beat, and uniform noise as the floor.

* ``PixelCategorical``: each pixel independent, with its own categorical distribution
  over ``levels`` intensities (counted, with add-``alpha`` smoothing). Exact likelihood.
* ``GaussianBaseline``: one multivariate Gaussian over all pixels (mean and covariance of
  the data, optionally truncated to its top principal components). Exact density on
  dequantised data; samples show what second-order statistics alone can do.
* ``uniform_noise``: images of independent uniform pixels.

All work on NumPy arrays and fit in seconds.
"""

from __future__ import annotations

import math

import numpy as np


class PixelCategorical:
    """Independent per-pixel categorical model over ``levels`` intensities.

    Args:
        levels: number of intensity levels k (2..256).
        alpha: add-alpha smoothing, so an unseen level keeps a small probability.

    ``fit`` takes integer images (N, H, W, C) in 0..k-1 (see ``data.quantize``).
    """

    def __init__(self, levels: int, alpha: float = 1.0):
        if not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 256:
            raise ValueError(f"levels must be an integer in [2, 256], got {levels!r}.")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        self.levels, self.alpha = int(levels), float(alpha)
        self.log_probs = None  # (H, W, C, levels)

    def _check(self, q) -> np.ndarray:
        q = np.asarray(q)
        if q.ndim != 4 or not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"expected integer images (N, H, W, C), got {q.dtype} of shape {q.shape}.")
        if q.min() < 0 or q.max() >= self.levels:
            raise ValueError(f"values must lie in [0, {self.levels - 1}], got [{q.min()}, {q.max()}].")
        if self.log_probs is not None and q.shape[1:] != self.log_probs.shape[:-1]:
            raise ValueError(f"fitted on images {self.log_probs.shape[:-1]}, got {q.shape[1:]}.")
        return q

    def fit(self, q) -> PixelCategorical:
        q = self._check(q)
        # One bincount over (pixel, level) pairs: O(N * D) rather than O(levels * N * D).
        pixel = np.arange(np.prod(q.shape[1:])).reshape(q.shape[1:])
        flat = (pixel[None] * self.levels + q).ravel()
        counts = np.bincount(flat, minlength=pixel.size * self.levels).reshape(*q.shape[1:], self.levels)
        probs = (counts + self.alpha) / (len(q) + self.alpha * self.levels)
        self.log_probs = np.log(probs)
        return self

    def log_prob(self, q) -> np.ndarray:
        """log P(x) in nats per image, shape (N,)."""
        if self.log_probs is None:
            raise ValueError("call fit first.")
        q = self._check(q)
        picked = np.take_along_axis(self.log_probs[None], q[..., None], axis=-1)[..., 0]
        return picked.reshape(len(q), -1).sum(1)

    def bits_per_dim(self, q) -> float:
        q = np.asarray(q)
        return float(-self.log_prob(q).mean() / (np.prod(q.shape[1:]) * math.log(2.0)))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` integer images drawn pixel by pixel, independently."""
        if self.log_probs is None:
            raise ValueError("call fit first.")
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(np.exp(self.log_probs), axis=-1)
        u = rng.random((n, *cdf.shape[:-1], 1))
        return np.minimum((u > cdf[None]).sum(-1), self.levels - 1).astype("int32")


class GaussianBaseline:
    """A multivariate Gaussian over flattened images.

    Args:
        n_components: keep the top principal components of the covariance and model the
            rest as isotropic noise (probabilistic PCA); ``None`` keeps the full covariance.
        eps: added to the covariance diagonal so the density exists for near-constant pixels.
    """

    def __init__(self, n_components: int | None = None, eps: float = 1e-3):
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be positive or None, got {n_components}.")
        self.n_components, self.eps = n_components, eps
        self.mean = self.shape = None

    def fit(self, x) -> GaussianBaseline:
        x = np.asarray(x, dtype="float64")
        if x.ndim < 2:
            raise ValueError(f"expected images (N, ...), got shape {x.shape}.")
        self.shape = x.shape[1:]
        flat = x.reshape(len(x), -1)
        self.mean = flat.mean(0)
        cov = np.cov(flat, rowvar=False)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1], eigvec[:, ::-1]  # largest first
        if self.n_components is not None:
            k = min(self.n_components, len(eigval))
            residual = eigval[k:].mean() if k < len(eigval) else 0.0
            eigval = np.concatenate([eigval[:k], np.full(len(eigval) - k, residual)])
        self.eigval, self.eigvec = np.maximum(eigval, 0.0) + self.eps, eigvec
        return self

    def log_prob(self, x) -> np.ndarray:
        """Log density in nats per image, shape (N,), for data in the range it was fitted on."""
        if self.mean is None:
            raise ValueError("call fit first.")
        flat = np.asarray(x, dtype="float64").reshape(len(x), -1)
        if flat.shape[1] != self.mean.size:
            raise ValueError(f"fitted on images of {self.mean.size} values, got {flat.shape[1]}.")
        proj = (flat - self.mean) @ self.eigvec
        d = self.mean.size
        return -0.5 * ((proj**2 / self.eigval).sum(1) + np.log(self.eigval).sum() + d * math.log(2 * math.pi))

    def sample(self, n: int, seed: int = 0, clip: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
        """``n`` images mean + eigvec @ (sqrt(eigval) * z), clipped to ``clip``."""
        if self.mean is None:
            raise ValueError("call fit first.")
        z = np.random.default_rng(seed).standard_normal((n, self.mean.size))
        flat = self.mean + (z * np.sqrt(self.eigval)) @ self.eigvec.T
        if clip is not None:
            flat = np.clip(flat, *clip)
        return flat.reshape(n, *self.shape).astype("float32")


def uniform_noise(n: int, shape=(28, 28, 1), value_range=(0.0, 1.0), seed: int = 0) -> np.ndarray:
    """``n`` images of independent uniform pixels in ``value_range``."""
    rng = np.random.default_rng(seed)
    return rng.uniform(*value_range, size=(n, *shape)).astype("float32")
