"""The distribution math several families share, written once (``keras.ops``, any backend).

* ``normal_log_density``: log N(x; mean, sigma^2) per value, from ``log_sigma`` (VAE decoders,
  flows' base density, the Gaussian baseline's diagonal case).
* ``diagonal_normal_log_density``: the same summed over the last axis, from a log-variance
  (a VAE's posterior and prior).
* ``gumbel_noise`` / ``gumbel_max``: sampling a categorical by ``argmax(logits + G)``
  (PixelCNN and the transformer's samplers).
* ``squared_distances`` / ``nearest``: ||a_i - b_j||^2 for every pair, and the nearest row of
  ``b`` for each row of ``a`` (vector quantisation, feature quantisation).
* ``bits_per_dim``: a negative log-likelihood in nats per example as bits per dimension.
"""

from __future__ import annotations

import math

import keras
from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def normal_log_density(x, mean, log_sigma):
    """``log N(x; mean, exp(log_sigma)^2)`` for each value (broadcasting, no sum)."""
    return -0.5 * (ops.square((x - mean) * ops.exp(-log_sigma)) + LOG_2PI) - log_sigma


def diagonal_normal_log_density(z, mean, log_var):
    """``log N(z; mean, diag(exp(log_var)))``, summed over the last axis: shape (batch,)."""
    return ops.sum(-0.5 * (ops.square(z - mean) * ops.exp(-log_var) + log_var + LOG_2PI), axis=-1)


def gumbel_noise(shape, seed=None):
    """Standard Gumbel noise ``-log(-log U)``; ``argmax(logits + noise)`` samples ``softmax(logits)``."""
    u = keras.random.uniform(shape, minval=1e-7, maxval=1.0 - 1e-7, seed=seed)
    return -ops.log(-ops.log(u))


def gumbel_max(logits, temperature=1.0, seed=None, noise=None):
    """One sample per row of categorical ``softmax(logits / temperature)`` (the Gumbel-max trick).

    ``noise``: Gumbel noise of ``logits``' shape, to reuse the same randomness (e.g. to show
    that two samplers give the same sample). Returns int32 indices, shape ``logits.shape[:-1]``.
    """
    if noise is None:
        noise = gumbel_noise(ops.shape(logits), seed)
    return ops.cast(ops.argmax(logits / temperature + noise, axis=-1), "int32")


def squared_distances(a, b):
    """``||a_i - b_j||^2`` for every row pair: (n, d), (k, d) -> (n, k), via the expansion a² - 2ab + b²."""
    return (ops.sum(ops.square(a), axis=1, keepdims=True) - 2.0 * ops.matmul(a, ops.transpose(b))
            + ops.sum(ops.square(b), axis=1)[None, :])


def nearest(a, b):
    """For each row of ``a`` (n, d), the index of the nearest row of ``b`` (k, d): int32 (n,)."""
    return ops.cast(ops.argmin(squared_distances(a, b), axis=1), "int32")


def bits_per_dim(nll_nats, num_dims: int, levels: int | None = None):
    """A per-example negative log-likelihood in nats as bits per dimension (arrays or tensors).

    Conventions:
        * **Discrete models** (PixelCNN, the per-pixel baseline): ``nll_nats`` is
          ``-log P(x)`` of the integer image; leave ``levels=None``.
        * **Continuous densities on dequantised data** (flows, VAEs): if the density is
          over data scaled to [0, 1] from ``levels`` integer values, pass ``levels`` and
          the ``num_dims * log(levels)`` change of scale is added, so the result is
          comparable with a discrete model at the same quantisation (it is an upper
          bound on the discrete model's bits/dim).

    Args:
        nll_nats: scalar, array or tensor of per-example NLLs in nats.
        num_dims: dimensions per example (H * W * C).
        levels: intensity levels of the data, for continuous densities on [0, 1].
    """
    from genlib._util import positive_int

    num_dims = positive_int("num_dims", num_dims)
    if levels is not None:
        nll_nats = nll_nats + num_dims * math.log(positive_int("levels", levels, 2))
    return nll_nats / (num_dims * math.log(2.0))
