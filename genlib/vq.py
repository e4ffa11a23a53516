"""Discrete latents: the vector quantiser and the VQ-VAE.

A VQ-VAE (van den Oord et al. 2017) encodes an image into a grid of vectors, replaces each
vector by its nearest entry of a learned **codebook**, and decodes the grid of codebook
entries back to an image. The image becomes a grid of integers (codebook indices): tokens
that an autoregressive model (a PixelCNN, a transformer) can learn as a second stage.

* ``VectorQuantizer``: nearest codebook entry, straight-through gradient, the codebook and
  commitment losses (``vq_losses``), an optional exponential-moving-average (EMA) codebook
  and restarts of dead codes.
* ``codebook_perplexity``, ``codes_used``: how many codes a batch of indices really uses.
* ``VQVAE``: strided conv encoder -> quantiser -> transposed conv decoder, trained with ``fit``.

Variables change inside ``call`` (EMA statistics, restarts), as in batch normalisation; this
is what the TensorFlow backend, which the book ships with, supports.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    return int(value)


def codebook_perplexity(indices, num_codes: int):
    """exp(entropy) of the codes' empirical frequencies: the effective number of codes in use.

    Args:
        indices: integer code indices, any shape, values in 0..num_codes-1.
        num_codes: K, the codebook size.

    Returns a scalar tensor in [1, K]: K when every code is used equally often, 1 when one
    code takes everything.
    """
    counts = ops.sum(ops.one_hot(ops.reshape(indices, (-1,)), num_codes), axis=0)
    p = counts / ops.maximum(ops.sum(counts), 1.0)
    # 0 log 0 = 0: unused codes contribute nothing to the entropy.
    entropy = -ops.sum(ops.where(p > 0, p * ops.log(ops.maximum(p, 1e-12)), 0.0))
    return ops.exp(entropy)


def codes_used(indices, num_codes: int):
    """Fraction of the K codes that appear at least once in ``indices`` (a scalar tensor in (0, 1])."""
    counts = ops.sum(ops.one_hot(ops.reshape(indices, (-1,)), num_codes), axis=0)
    return ops.mean(ops.cast(counts > 0, "float32"))


def vq_losses(z_e, codes):
    """The two quantisation losses (mean squared distances per vector component).

    Args:
        z_e: encoder outputs (..., D).
        codes: their codebook entries e_k (..., D), differentiable w.r.t. the codebook.

    Returns ``(codebook_loss, commitment_loss)``: ``||sg(z_e) - e||^2`` moves the codes towards
    the encoder outputs; ``||z_e - sg(e)||^2`` keeps the encoder close to its codes (multiply
    it by beta). ``sg`` is stop-gradient: each term trains one side only.
    """
    codebook_loss = ops.mean(ops.square(ops.stop_gradient(z_e) - codes))
    commitment_loss = ops.mean(ops.square(z_e - ops.stop_gradient(codes)))
    return codebook_loss, commitment_loss


@keras.saving.register_keras_serializable(package="genlib")
class VectorQuantizer(keras.layers.Layer):
    """Replace each D-vector by its nearest codebook row; pass gradients straight through.

    Args:
        num_codes: K, the codebook size (>= 2).
        code_dim: D, the size of each code vector (the encoder's channels).
        ema: update the codebook by exponential moving averages of the vectors assigned to each
            code (no codebook loss, no gradient to the codebook) instead of by gradient descent.
        decay: gamma in [0, 1), the EMA decay of the codebook statistics and of the code usage.
        restart_threshold: a code whose EMA share of assignments falls below
            ``restart_threshold / K`` (the uniform share times this factor) is *dead* and is
            moved onto a random encoder output of the current batch. 0 disables restarts.
        codebook_initializer: initialiser of the (K, D) codebook.
        seed: int seed of the restarts' random choices.

    Shapes: ``call(z_e)`` with z_e (..., D) returns ``(z_q, indices)``: z_q (..., D) equals the
    nearest codebook rows in value and has the identity as gradient w.r.t. z_e (straight
    through); indices (...,) int32. With ``training=True`` the EMA statistics, the usage and the
    restarts are updated.
    """

    def __init__(self, num_codes: int, code_dim: int, ema: bool = False, decay: float = 0.99,
                 restart_threshold: float = 0.0, codebook_initializer="random_uniform", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_codes = _check_int("num_codes", num_codes, 2)
        self.code_dim = _check_int("code_dim", code_dim, 1)
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        if float(restart_threshold) < 0.0:
            raise ValueError(f"restart_threshold must be >= 0 (0 disables restarts), got {restart_threshold!r}.")
        self.ema, self.decay, self.restart_threshold = bool(ema), float(decay), float(restart_threshold)
        self.codebook_initializer = keras.initializers.get(codebook_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if input_shape[-1] != self.code_dim:
            raise ValueError(f"VectorQuantizer(code_dim={self.code_dim}) needs inputs (..., {self.code_dim}), "
                             f"got shape {tuple(input_shape)}.")
        k, d = self.num_codes, self.code_dim
        # Under EMA the codebook is a running average, not a parameter the optimizer may move.
        self.codebook = self.add_weight(name="codebook", shape=(k, d), initializer=self.codebook_initializer,
                                        trainable=not self.ema)
        # Running count and sum of the vectors assigned to each code; a code keeps its value
        # until it has been assigned something (count 0), and sum / count survives both decaying.
        self.ema_count = self.add_weight(name="ema_count", shape=(k,), initializer="zeros", trainable=False)
        self.ema_sum = self.add_weight(name="ema_sum", shape=(k, d), initializer="zeros", trainable=False)
        self.usage = self.add_weight(name="usage", shape=(k,), trainable=False,
                                     initializer=keras.initializers.Constant(1.0 / k))

    def nearest(self, flat):
        """Index of the nearest code for each row of ``flat`` (N, D): (N,) int32."""
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, one matrix product instead of an (N, K, D) tensor.
        distances = (ops.sum(ops.square(flat), axis=1, keepdims=True) - 2.0 * ops.matmul(flat, ops.transpose(
            self.codebook)) + ops.sum(ops.square(self.codebook), axis=1)[None, :])
        return ops.cast(ops.argmin(distances, axis=1), "int32")

    def lookup(self, indices):
        """Codebook rows for integer ``indices`` (...,) -> (..., D); differentiable w.r.t. the codebook."""
        return ops.take(self.codebook, ops.cast(indices, "int32"), axis=0)

    def call(self, z_e, training=False):
        if z_e.shape[-1] != self.code_dim:
            raise ValueError(f"expected inputs (..., {self.code_dim}), got shape {tuple(z_e.shape)}.")
        flat = ops.reshape(z_e, (-1, self.code_dim))
        indices = self.nearest(flat)
        if training:
            self._update(flat, indices)
        codes = ops.reshape(self.lookup(indices), ops.shape(z_e))
        # Straight-through: the value of the codes, the gradient of the identity (argmin has none).
        # Written as sg(e) + (z - sg(z)) rather than z + sg(e - z): z - z is exactly 0 in floating
        # point, so z_q is exactly a codebook row; and no decoder gradient reaches the codebook.
        z_q = ops.stop_gradient(codes) + (z_e - ops.stop_gradient(z_e))
        return z_q, ops.reshape(indices, ops.shape(z_e)[:-1])

    def _update(self, flat, indices):
        one_hot = ops.one_hot(indices, self.num_codes)  # (N, K)
        counts = ops.sum(one_hot, axis=0)
        g = self.decay
        self.usage.assign(g * self.usage + (1.0 - g) * counts / ops.cast(ops.shape(flat)[0], "float32"))
        if self.ema:
            self.ema_count.assign(g * self.ema_count + (1.0 - g) * counts)
            self.ema_sum.assign(g * self.ema_sum + (1.0 - g) * ops.matmul(ops.transpose(one_hot), flat))
            # A code's new value is the running mean of the vectors assigned to it.
            safe = ops.maximum(self.ema_count, 1e-6)[:, None]
            self.codebook.assign(ops.where(self.ema_count[:, None] > 1e-6, self.ema_sum / safe, self.codebook))
        if self.restart_threshold > 0:
            self._restart_dead(flat)

    def _restart_dead(self, flat):
        k = self.num_codes
        dead = self.usage < self.restart_threshold / k  # (K,) bool
        # A random encoder output of this batch for every code; only dead codes take theirs.
        n = ops.cast(ops.shape(flat)[0], "float32")
        pick = ops.cast(ops.floor(keras.random.uniform((k,), seed=self.seed_generator) * n), "int32")
        candidates = ops.take(flat, ops.minimum(pick, ops.cast(n, "int32") - 1), axis=0)
        self.codebook.assign(ops.where(dead[:, None], candidates, self.codebook))
        # A restarted code gets the uniform share and one fresh count: time to attract vectors.
        self.ema_sum.assign(ops.where(dead[:, None], candidates, self.ema_sum))
        self.ema_count.assign(ops.where(dead, 1.0, self.ema_count))
        self.usage.assign(ops.where(dead, 1.0 / k, self.usage))

    def compute_output_shape(self, input_shape):
        return input_shape, input_shape[:-1]

    def get_config(self):
        return {**super().get_config(), "num_codes": self.num_codes, "code_dim": self.code_dim, "ema": self.ema,
                "decay": self.decay, "restart_threshold": self.restart_threshold,
                "codebook_initializer": keras.initializers.serialize(self.codebook_initializer), "seed": self.seed}


@keras.saving.register_keras_serializable(package="genlib")
class VQVAE(keras.Model):
    """A VQ-VAE for single-channel images in [0, 1].

    Encoder: ``len(filters)`` × (4×4 conv, stride 2, ReLU) → 3×3 conv (ReLU) → 1×1 conv to D
    channels, so an H×W image becomes an (H/2^L)×(W/2^L) grid of D-vectors. Quantiser:
    ``VectorQuantizer``. Decoder: the mirror image, with transposed convolutions and a sigmoid.

    Loss per batch: ``MSE(x, x_hat) + codebook_loss + beta * commitment_loss`` (the codebook
    loss is left out under EMA, where the codebook is not trained by gradients).

    Args:
        image_shape: (H, W, 1), H and W divisible by 2^len(filters).
        num_codes: K, codebook size.
        code_dim: D, channels of each latent vector.
        filters: channels of the strided convolutions, e.g. (32, 64): 28×28 -> 7×7.
        beta: weight of the commitment loss.
        ema, decay, restart_threshold, seed: passed to ``VectorQuantizer``.

    ``call(x)`` returns a dict: ``reconstruction`` (batch, H, W, 1), ``z_e`` (batch, h, w, D),
    ``indices`` (batch, h, w) int32. Tracked metrics: ``loss``, ``recon_mse``, ``codebook_loss``,
    ``commitment_loss``, ``perplexity`` and ``codes_used`` (of each batch's indices).
    """

    def __init__(self, image_shape=(28, 28, 1), num_codes: int = 64, code_dim: int = 16, filters=(32, 64),
                 beta: float = 0.25, ema: bool = True, decay: float = 0.99, restart_threshold: float = 0.1,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        image_shape = tuple(int(s) for s in image_shape)
        filters = tuple(int(f) for f in filters)
        if len(image_shape) != 3 or image_shape[-1] != 1:
            raise ValueError(f"image_shape must be (H, W, 1), got {image_shape}.")
        if not filters or min(filters) < 1:
            raise ValueError(f"filters must be a non-empty list of positive ints, got {filters}.")
        stride = 2 ** len(filters)
        if image_shape[0] % stride or image_shape[1] % stride:
            raise ValueError(f"{len(filters)} stride-2 layers need H and W divisible by {stride}, "
                             f"got image_shape {image_shape}.")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}.")
        self.image_shape, self.filters, self.beta = image_shape, filters, float(beta)
        self.grid_shape = (image_shape[0] // stride, image_shape[1] // stride)
        self.quantizer = VectorQuantizer(num_codes, code_dim, ema=ema, decay=decay,
                                         restart_threshold=restart_threshold, seed=seed, name="quantizer")
        self.num_codes, self.code_dim = self.quantizer.num_codes, self.quantizer.code_dim
        self.seed = seed
        layers = keras.layers
        self.encoder = keras.Sequential(
            [layers.Input(image_shape)]
            + [layers.Conv2D(f, 4, strides=2, padding="same", activation="relu") for f in filters]
            + [layers.Conv2D(filters[-1], 3, padding="same", activation="relu"), layers.Conv2D(self.code_dim, 1)],
            name="encoder")
        self.decoder = keras.Sequential(
            [layers.Input((*self.grid_shape, self.code_dim)),
             layers.Conv2D(filters[-1], 3, padding="same", activation="relu")]
            + [layers.Conv2DTranspose(f, 4, strides=2, padding="same", activation="relu") for f in filters[::-1]]
            + [layers.Conv2D(image_shape[-1], 3, padding="same", activation="sigmoid")],
            name="decoder")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in
                         ("loss", "recon_mse", "codebook_loss", "commitment_loss", "perplexity", "codes_used")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        self.quantizer.build((None, *self.grid_shape, self.code_dim))
        self.built = True

    def _check_images(self, x):
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images (batch, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}.")

    def call(self, x, training=False):
        self._check_images(x)
        z_e = self.encoder(x, training=training)
        z_q, indices = self.quantizer(z_e, training=training)
        return {"reconstruction": self.decoder(z_q, training=training), "z_e": z_e, "indices": indices}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        recon = ops.mean(ops.square(x - y_pred["reconstruction"]))
        codebook_loss, commitment_loss = vq_losses(y_pred["z_e"], self.quantizer.lookup(y_pred["indices"]))
        loss = recon + self.beta * commitment_loss
        if not self.quantizer.ema:  # under EMA the codebook follows its running means instead
            loss = loss + codebook_loss
        k = self.num_codes
        for name, value in (("loss", loss), ("recon_mse", recon), ("codebook_loss", codebook_loss),
                            ("commitment_loss", commitment_loss),
                            ("perplexity", codebook_perplexity(y_pred["indices"], k)),
                            ("codes_used", codes_used(y_pred["indices"], k))):
            self.trackers[name].update_state(value)
        return loss

    # -- what the chapter calls --------------------------------------------------

    def encode(self, x, batch_size: int = 500) -> np.ndarray:
        """Images (N, H, W, 1) -> code indices (N, h, w, 1) int32, the token grid (NumPy)."""
        x = np.asarray(x, dtype="float32")
        self._check_images(x)
        out = [ops.convert_to_numpy(self.quantizer(self.encoder(x[i: i + batch_size]))[1])
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out)[..., None].astype("int32")

    def decode(self, indices, batch_size: int = 500) -> np.ndarray:
        """Code indices (N, h, w) or (N, h, w, 1) -> images (N, H, W, 1) in [0, 1] (NumPy)."""
        q = np.asarray(indices)
        q = q[..., 0] if q.ndim == 4 else q
        if q.ndim != 3 or q.shape[1:] != self.grid_shape or q.min() < 0 or q.max() >= self.num_codes:
            raise ValueError(f"expected indices (N, {self.grid_shape[0]}, {self.grid_shape[1]}) in "
                             f"[0, {self.num_codes - 1}], got shape {q.shape}.")
        out = [ops.convert_to_numpy(self.decoder(self.quantizer.lookup(q[i: i + batch_size])))
               for i in range(0, len(q), batch_size)]
        return np.concatenate(out)

    def reconstruct(self, x, batch_size: int = 500) -> np.ndarray:
        """Encode, quantise, decode: (N, H, W, 1) -> (N, H, W, 1) (NumPy)."""
        return self.decode(self.encode(x, batch_size), batch_size)

    def bits_per_image(self) -> float:
        """The size of the discrete code of one image: h·w·log2(K) bits."""
        return float(self.grid_shape[0] * self.grid_shape[1] * math.log2(self.num_codes))

    def get_config(self):
        q = self.quantizer
        return {**super().get_config(), "image_shape": self.image_shape, "num_codes": self.num_codes,
                "code_dim": self.code_dim, "filters": self.filters, "beta": self.beta, "ema": q.ema,
                "decay": q.decay, "restart_threshold": q.restart_threshold, "seed": self.seed}
