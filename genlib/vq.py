"""Discrete latents: the vector quantiser, the VQ-VAE and two-stage generation.

Chapter 10 (chapters/10_vq.ipynb); chapter 3 (chapters/03_gan.ipynb) uses the same quantiser
inside a GAN's discriminator (feature quantisation).

A VQ-VAE (van den Oord et al. 2017) encodes an image into a grid of vectors, replaces each
vector by its nearest entry of a learned **codebook**, and decodes the grid of codebook
entries back to an image. The image becomes a grid of integers (codebook indices): tokens
that an autoregressive model (a PixelCNN, a transformer) can learn as a second stage.

* ``VectorQuantizer``: nearest codebook entry, straight-through gradient, an optional
  exponential-moving-average (EMA) codebook, restarts of dead codes and a codebook drawn
  from the first batch. ``vq_losses``: the codebook and commitment losses.
* ``codebook_perplexity``, ``codes_used``: how many codes a batch of indices really uses.
* ``VQVAE``: strided conv encoder -> quantiser -> transposed conv decoder, trained with ``fit``.
* ``TwoStageGenerator``: a prior over token grids followed by the VQ-VAE's decoder, with the
  book's ``generate(n, seed=...)``.

Variables change inside ``call`` in training mode (EMA statistics, restarts), as in batch
normalisation; all of it is ``keras.ops``, so it runs on every Keras backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib.distributions import nearest


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
            moved onto a random input vector of the current batch. 0 disables restarts.
        init_from_data: on the first training call, set the codebook to K vectors drawn from
            the batch. A random codebook far from the inputs would send every vector to the same
            few codes, and the others would never move (feature quantisation in a GAN uses this).
        codebook_initializer: initialiser of the (K, D) codebook.
        seed: int seed of the restarts' and the initialisation's random choices.

    Shapes: ``call(z_e)`` with z_e (..., D) returns ``(z_q, indices)``: z_q (..., D) equals the
    nearest codebook rows in value and has the identity as gradient w.r.t. z_e (straight
    through); indices (...,) int32. ``return_codes=True`` adds the chosen rows (..., D) with
    their gradient w.r.t. the codebook (for ``vq_losses``). With ``training=True`` the codebook
    statistics are updated *after* the lookup: z_q and the codes are the rows that chose the
    indices, not rows a restart has just moved.
    """

    def __init__(self, num_codes: int, code_dim: int, ema: bool = False, decay: float = 0.99,
                 restart_threshold: float = 0.0, init_from_data: bool = False,
                 codebook_initializer="random_uniform", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_codes = _util.positive_int("num_codes", num_codes, 2)
        self.code_dim = _util.positive_int("code_dim", code_dim)
        self.decay = _util.fraction("decay", decay)
        self.restart_threshold = _util.number("restart_threshold (0 disables restarts)", restart_threshold, low=0.0)
        self.ema, self.init_from_data = bool(ema), bool(init_from_data)
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
        if self.init_from_data:
            self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros", trainable=False)

    def nearest(self, flat):
        """Index of the nearest code for each row of ``flat`` (N, D): (N,) int32."""
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: one matrix product, not an (N, K, D) tensor.
        return nearest(flat, self.codebook)

    def lookup(self, indices):
        """Codebook rows for integer ``indices`` (...,) -> (..., D); differentiable w.r.t. the codebook."""
        return ops.take(self.codebook, ops.cast(indices, "int32"), axis=0)

    def call(self, z_e, training=False, return_codes=False):
        if z_e.shape[-1] != self.code_dim:
            raise ValueError(f"expected inputs (..., {self.code_dim}), got shape {tuple(z_e.shape)}.")
        flat = ops.reshape(z_e, (-1, self.code_dim))
        if training and self.init_from_data:
            self.initialize_from(flat)
        indices = self.nearest(flat)
        codes = ops.reshape(self.lookup(indices), ops.shape(z_e))
        if training:  # after the lookup: the output uses the codebook that chose the indices
            self.update_codebook(flat, indices)
        # Straight-through: the value of the codes, the gradient of the identity (argmin has none).
        # Written as sg(e) + (z - sg(z)) rather than z + sg(e - z): z - z is exactly 0 in floating
        # point, so z_q is exactly a codebook row; and no decoder gradient reaches the codebook.
        z_q = ops.stop_gradient(codes) + (z_e - ops.stop_gradient(z_e))
        indices = ops.reshape(indices, ops.shape(z_e)[:-1])
        return (z_q, indices, codes) if return_codes else (z_q, indices)

    def update_codebook(self, flat, indices):
        """One training step of the codebook statistics, given vectors ``flat`` (N, D) and their codes (N,).

        The usage share of every code is averaged; under EMA each code moves to the running mean
        of the vectors assigned to it; then dead codes are restarted (``restart_threshold > 0``).
        """
        flat = ops.stop_gradient(ops.convert_to_tensor(flat))  # statistics of the inputs, not a path for gradients
        one_hot = ops.one_hot(indices, self.num_codes, dtype=flat.dtype)  # (N, K)
        counts = ops.sum(one_hot, axis=0)
        g = self.decay
        self.usage.assign(g * self.usage + (1.0 - g) * counts / ops.cast(ops.shape(flat)[0], flat.dtype))
        if self.ema:
            self.ema_count.assign(g * self.ema_count + (1.0 - g) * counts)
            self.ema_sum.assign(g * self.ema_sum + (1.0 - g) * ops.matmul(ops.transpose(one_hot), flat))
            # A code's new value is the running mean of the vectors assigned to it.
            safe = ops.maximum(self.ema_count, 1e-6)[:, None]
            self.codebook.assign(ops.where(self.ema_count[:, None] > 1e-6, self.ema_sum / safe, self.codebook.value))
        if self.restart_threshold > 0:
            self.restart_dead_codes(flat)

    def restart_dead_codes(self, flat):
        """Move every code whose usage share is below ``restart_threshold / K`` onto a random row of ``flat``."""
        k = self.num_codes
        dead = self.usage < self.restart_threshold / k  # (K,) bool
        # A random input vector of this batch for every code; only dead codes take theirs.
        n = ops.cast(ops.shape(flat)[0], "float32")
        pick = ops.cast(ops.floor(keras.random.uniform((k,), seed=self.seed_generator) * n), "int32")
        candidates = ops.take(flat, ops.minimum(pick, ops.cast(n, "int32") - 1), axis=0)
        self.codebook.assign(ops.where(dead[:, None], candidates, self.codebook.value))
        # A restarted code gets the uniform share and one fresh count: time to attract vectors.
        self.ema_sum.assign(ops.where(dead[:, None], candidates, self.ema_sum.value))
        self.ema_count.assign(ops.where(dead, 1.0, self.ema_count.value))
        self.usage.assign(ops.where(dead, 1.0 / k, self.usage.value))

    def initialize_from(self, flat):
        """On the first training call only, set the codebook to K rows of ``flat`` (N, D) drawn at random."""
        first = self.initialized < 0.5  # a flag, not Python control flow, so it works inside a compiled step
        picks = keras.random.randint((self.num_codes,), 0, ops.shape(flat)[0], seed=self.seed_generator)
        drawn = ops.take(ops.stop_gradient(flat), picks, axis=0)
        self.codebook.assign(ops.where(first, drawn, self.codebook.value))
        self.initialized.assign(1.0)

    def get_config(self):
        return {**super().get_config(), "num_codes": self.num_codes, "code_dim": self.code_dim, "ema": self.ema,
                "decay": self.decay, "restart_threshold": self.restart_threshold,
                "init_from_data": self.init_from_data,
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
        grid_shape: (h, w) of the token grid; None: (H/2^L, W/2^L). A smaller grid adds one
            unpadded ("valid") convolution of kernel (H/2^L - h + 1, W/2^L - w + 1) after the
            strided ones, and its transpose at the start of the decoder: with two stride-2 layers,
            28×28 -> 7×7 -> 4×4 is a downsampling of 7 per side instead of 4.
        beta: weight of the commitment loss.
        ema, decay, restart_threshold, seed: passed to ``VectorQuantizer``. (Restarts of a
            gradient-trained codebook, ``ema=False``, take effect on TensorFlow and PyTorch;
            JAX's ``fit`` keeps only the optimizer's update of a trainable variable.)

    ``call(x)`` returns a dict: ``reconstruction`` (batch, H, W, 1), ``z_e`` (batch, h, w, D),
    ``codes`` (batch, h, w, D) the chosen codebook rows, ``indices`` (batch, h, w) int32.
    Tracked metrics: ``loss``, ``recon_mse``, ``codebook_loss``, ``commitment_loss``,
    ``perplexity`` and ``codes_used`` (of each batch's indices).
    """

    def __init__(self, image_shape=(28, 28, 1), num_codes: int = 64, code_dim: int = 16, filters=(32, 64),
                 beta: float = 0.25, ema: bool = True, decay: float = 0.99, restart_threshold: float = 0.1,
                 seed=None, grid_shape=None, **kwargs):
        super().__init__(**kwargs)
        image_shape = _util.shape("image_shape", image_shape, 3)
        if image_shape[-1] != 1:
            raise ValueError(f"image_shape must be (H, W, 1), got {image_shape}.")
        filters = _util.shape("filters", filters)
        if not filters:
            raise ValueError(f"filters must be a non-empty list of positive ints, got {filters}.")
        stride = 2 ** len(filters)
        if image_shape[0] % stride or image_shape[1] % stride:
            raise ValueError(f"{len(filters)} stride-2 layers need H and W divisible by {stride}, "
                             f"got image_shape {image_shape}.")
        self.image_shape, self.filters, self.beta = image_shape, filters, _util.number("beta", beta, low=0.0)
        strided = (image_shape[0] // stride, image_shape[1] // stride)
        self.grid_shape = strided if grid_shape is None else _util.shape("grid_shape", grid_shape, 2)
        if self.grid_shape[0] > strided[0] or self.grid_shape[1] > strided[1]:
            raise ValueError(f"grid_shape must be at most {strided} (the strided layers' output), got {grid_shape}.")
        # The unpadded convolution that shrinks the strided grid to grid_shape (none if equal).
        valid = (strided[0] - self.grid_shape[0] + 1, strided[1] - self.grid_shape[1] + 1)
        shrink = [] if valid == (1, 1) else [_valid_conv(filters[-1], valid)]
        grow = [] if valid == (1, 1) else [_valid_conv(filters[-1], valid, transpose=True)]
        self.quantizer = VectorQuantizer(num_codes, code_dim, ema=ema, decay=decay,
                                         restart_threshold=restart_threshold, seed=seed, name="quantizer")
        self.num_codes, self.code_dim = self.quantizer.num_codes, self.quantizer.code_dim
        self.seed = seed
        layers = keras.layers
        self.encoder = keras.Sequential(
            [layers.Input(image_shape)]
            + [layers.Conv2D(f, 4, strides=2, padding="same", activation="relu") for f in filters] + shrink
            + [layers.Conv2D(filters[-1], 3, padding="same", activation="relu"), layers.Conv2D(self.code_dim, 1)],
            name="encoder")
        self.decoder = keras.Sequential(
            [layers.Input((*self.grid_shape, self.code_dim)),
             layers.Conv2D(filters[-1], 3, padding="same", activation="relu")] + grow
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
        _util.check_images(x, self.image_shape)

    def call(self, x, training=False):
        self._check_images(x)
        z_e = self.encoder(x, training=training)
        z_q, indices, codes = self.quantizer(z_e, training=training, return_codes=True)
        return {"reconstruction": self.decoder(z_q, training=training), "z_e": z_e, "codes": codes,
                "indices": indices}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        recon = ops.mean(ops.square(x - y_pred["reconstruction"]))
        codebook_loss, commitment_loss = vq_losses(y_pred["z_e"], y_pred["codes"])
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
        batch_size = _util.positive_int("batch_size", batch_size)
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
        batch_size = _util.positive_int("batch_size", batch_size)
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
                "decay": q.decay, "restart_threshold": q.restart_threshold, "seed": self.seed,
                "grid_shape": self.grid_shape}


def _valid_conv(filters, kernel, transpose=False):
    """An unpadded (transposed) convolution with ReLU: shrinks (grows) a grid by ``kernel - 1`` per axis."""
    layer = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    return layer(filters, kernel, padding="valid", activation="relu")


class TwoStageGenerator:
    """Two-stage generation: a prior samples a grid of code indices, the VQ-VAE's decoder draws it.

    Args:
        vqvae: a trained ``VQVAE`` (its codebook and decoder; a ``genlib.vqgan.VQGAN`` is one).
        prior: a model of token grids with ``generate(n, *, seed, batch_size, progress[, temperature, top_k])``
            returning code indices (n, h, w) or (n, h, w, 1) in 0..K-1: e.g. a
            ``genlib.autoregressive.PixelCNN(image_shape=(h, w, 1), levels=K)`` fitted to
            ``vqvae.encode(x_train)``, or ``genlib.baselines.PixelCategorical(K)`` (independent positions).
    """

    def __init__(self, vqvae: VQVAE, prior):
        if not isinstance(vqvae, VQVAE):
            raise ValueError(f"vqvae must be a genlib.vq.VQVAE, got {type(vqvae).__name__}.")
        if not callable(getattr(prior, "generate", None)):
            raise ValueError(f"prior must have a generate(n, seed=...) method, got {type(prior).__name__}.")
        self.vqvae, self.prior = vqvae, prior

    def sample_tokens(self, n: int, *, seed=None, batch_size: int = 500, progress=None,
                      temperature: float = 1.0, top_k=None) -> np.ndarray:
        """``n`` token grids from the prior: (n, h, w, 1) int32 code indices."""
        n = _util.positive_int("n", n)
        # A prior without a temperature or top-k (independent positions) is asked only at the defaults.
        options = {} if temperature == 1.0 else {"temperature": temperature}
        if top_k is not None:
            options["top_k"] = top_k  # a transformer prior's top-k sampling
        q = np.asarray(self.prior.generate(n, seed=seed, batch_size=batch_size, progress=progress, **options))
        q = q.reshape(n, *self.vqvae.grid_shape, 1)
        return np.rint(q).astype("int32")  # a prior may return its integer levels as floats

    def generate(self, n: int, *, seed=None, batch_size: int = 500, progress=None,
                 temperature: float = 1.0, top_k=None) -> np.ndarray:
        """``n`` images (n, H, W, 1) in [0, 1]: tokens from the prior, decoded. Same seed, same images.

        ``temperature`` divides the prior's logits (below 1: safer, less varied token grids);
        ``top_k`` (a prior that has it, e.g. ``genlib.vqgan.GPTPrior``) samples among the k likeliest codes.
        """
        tokens = self.sample_tokens(n, seed=seed, batch_size=batch_size, progress=progress, temperature=temperature,
                                    top_k=top_k)
        return self.vqvae.decode(tokens, batch_size)
