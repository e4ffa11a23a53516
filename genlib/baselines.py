"""The two baselines every chapter must beat, and uniform noise as the floor. Chapter 1 (chapters/01_intro.ipynb).

* ``PixelCategorical``: each pixel independent, with its own categorical distribution
  over ``levels`` intensities (counted, with add-``alpha`` smoothing). Exact likelihood.
* ``GaussianBaseline``: one multivariate Gaussian over all pixels (mean and covariance of
  the data, optionally truncated to its top principal components). Exact density on
  dequantised data; samples show what second-order statistics alone can do.
* ``uniform_noise``: images of independent uniform pixels.

All work on NumPy arrays and fit in seconds. Both models sample with the book's
``generate(n, *, seed=None, batch_size=..., progress=False)`` (a progress bar only when asked
for: sampling takes milliseconds).
"""

from __future__ import annotations

import math

import numpy as np

from genlib import _util


def _chunks(n: int, batch_size: int, progress, label: str):
    """``(start, size)`` of each batch of ``n`` draws, with a progress bar over them."""
    n, batch_size = _util.positive_int("n", n), _util.positive_int("batch_size", batch_size)
    with _util.Progress(n, enabled=progress, unit="sample", label=label) as bar:
        for start in range(0, n, batch_size):
            yield start, min(batch_size, n - start)
            bar.update(min(start + batch_size, n))


class PixelCategorical:
    """Independent per-pixel categorical model over ``levels`` intensities.

    Args:
        levels: number of intensity levels k (2..256).
        alpha: add-alpha smoothing, so an unseen level keeps a small probability.

    ``fit`` takes integer images (N, H, W, C) in 0..k-1 (see ``data.quantize``).
    """

    def __init__(self, levels: int, alpha: float = 1.0):
        if _util.positive_int("levels", levels, 2) > 256:
            raise ValueError(f"levels must be an integer in [2, 256], got {levels!r}.")
        self.levels, self.alpha = int(levels), _util.number("alpha", alpha, low=0.0, low_open=True)
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

    def generate(self, n: int, *, seed=None, batch_size: int = 1000, progress: bool | None = False) -> np.ndarray:
        """``n`` images drawn pixel by pixel, independently: **integer levels** (n, H, W, C) in 0..levels-1, int32.

        ``seed``: an int (the same seed gives the same images, whatever ``batch_size``) or None.
        ``batch_size`` bounds memory (a batch compares against every level's CDF at once).
        """
        if self.log_probs is None:
            raise ValueError("call fit first.")
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(np.exp(self.log_probs), axis=-1)
        out = []
        for _, m in _chunks(n, batch_size, progress, "per-pixel sampling"):
            u = rng.random((m, *cdf.shape[:-1], 1))
            out.append(np.minimum((u > cdf[None]).sum(-1), self.levels - 1).astype("int32"))
        return np.concatenate(out)


class GaussianBaseline:
    """A multivariate Gaussian over flattened images.

    Args:
        n_components: keep the top principal components of the covariance and model the
            rest as isotropic noise (probabilistic PCA); ``None`` keeps the full covariance.
        eps: added to the covariance diagonal so the density exists for near-constant pixels.
    """

    def __init__(self, n_components: int | None = None, eps: float = 1e-3):
        self.n_components = _util.optional_positive_int("n_components", n_components)
        self.eps = _util.number("eps", eps, low=0.0)
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

    def generate(self, n: int, *, seed=None, batch_size: int = 1000, progress: bool | None = False,
                 clip: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
        """``n`` images ``mean + eigvec @ (sqrt(eigval) * z)``: float32 (n, *shape) in the fitted data's range.

        Args:
            n: number of images.
            seed: an int (the same seed gives the same images, whatever ``batch_size``) or None.
            batch_size: images drawn at once; progress: a progress bar (None: shown except under smoke).
            clip: the data's value range, e.g. ``(0, 1)`` or ``(-1, 1)``; None keeps raw values.
        """
        if self.mean is None:
            raise ValueError("call fit first.")
        rng = np.random.default_rng(seed)
        out = []
        for _, m in _chunks(n, batch_size, progress, "Gaussian sampling"):
            z = rng.standard_normal((m, self.mean.size))
            flat = self.mean + (z * np.sqrt(self.eigval)) @ self.eigvec.T
            out.append(flat if clip is None else np.clip(flat, *clip))
        return np.concatenate(out).reshape(n, *self.shape).astype("float32")


def uniform_noise(n: int, shape=(28, 28, 1), value_range=(0.0, 1.0), seed: int = 0) -> np.ndarray:
    """``n`` images of independent uniform pixels in ``value_range``."""
    rng = np.random.default_rng(seed)
    return rng.uniform(*value_range, size=(n, *shape)).astype("float32")
