"""Autoencoders and variational autoencoders (Kingma & Welling 2014; Rezende et al. 2014).
Chapter 2 (chapters/02_vae.ipynb).

* ``build_encoder`` / ``build_decoder``: convolutional networks sized by arguments. The
  encoder maps an image to the mean and log-variance of a diagonal Gaussian over z; the
  decoder maps z to the mean image.
* ``build_autoencoder``: the same two networks wired into a plain (deterministic) autoencoder.
* ``Sampling``: the reparameterisation trick, ``z = mu + exp(log_var / 2) * eps``.
* ``gaussian_kl``: the ELBO's KL term in closed form. The Gaussian log-densities come from
  ``genlib.distributions`` (``normal_log_density``, ``diagonal_normal_log_density``).
* ``ConstantBeta``, ``LinearWarmup``, ``CyclicalBeta``: schedules for the KL weight beta.
* ``VAE``: a model trained with ``fit`` on the negative ELBO ``-log p(x|z) + beta * KL``,
  with a Gaussian decoder whose per-pixel scale is learned, optional free bits, and an
  importance-sampled log-likelihood bound; ``generate(n)`` samples it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from genlib import _util
from genlib.distributions import diagonal_normal_log_density, normal_log_density

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Cov_x(E_q[z_u]) > 0.01


# ---------------------------------------------------------------------------
# The ELBO's pieces


def gaussian_kl(z_mean, z_log_var):
    """KL(N(mu, diag(sigma^2)) || N(0, I)) per latent dimension, in nats.

    ``0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)``. Shapes: (batch, d), (batch, d) -> (batch, d).
    Sum over the last axis for the KL of the whole code.
    """
    return 0.5 * (ops.square(z_mean) + ops.exp(z_log_var) - 1.0 - z_log_var)


@keras.saving.register_keras_serializable(package="genlib")
class Sampling(layers.Layer):
    """The reparameterisation trick: a sample of N(mu, diag(exp(log_var))) that is differentiable in both.

    ``z = mu + exp(log_var / 2) * eps`` with ``eps ~ N(0, I)``: the randomness sits in
    ``eps``, which does not depend on the encoder, so gradients flow through mu and log_var.

    Args:
        seed: seed of the layer's ``SeedGenerator``.

    Shapes: [(batch, d), (batch, d)] -> (batch, d).
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"Sampling expects [z_mean, z_log_var], got {type(inputs).__name__}.")
        z_mean, z_log_var = inputs
        if tuple(z_mean.shape) != tuple(z_log_var.shape):
            raise ValueError(f"z_mean and z_log_var must share a shape, got {z_mean.shape} and {z_log_var.shape}.")
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


# ---------------------------------------------------------------------------
# Networks


def _check_sizes(image_shape, latent_dim, filters):
    _util.positive_int("latent_dim", latent_dim)
    _util.shape("image_shape (height, width, channels)", image_shape, 3)
    if not filters:
        raise ValueError(f"filters must be a non-empty list of positive ints, got {filters!r}.")
    _util.shape("filters", filters)
    factor = 2 ** len(filters)
    height, width, _ = image_shape
    if height % factor or width % factor:
        raise ValueError(f"image height and width must be divisible by 2**len(filters) = {factor} "
                         f"(one stride-2 convolution per entry of filters), got {image_shape!r}.")


def build_encoder(image_shape=(28, 28, 1), latent_dim: int = 2, filters=(32, 64), dense_units: int = 128,
                  name: str = "encoder") -> keras.Model:
    """Convolutional encoder: image -> [z_mean, z_log_var].

    Args:
        image_shape: (H, W, C); H and W divisible by ``2 ** len(filters)``.
        latent_dim: size d of the code z.
        filters: channels of each stride-2 3x3 convolution (each halves H and W).
        dense_units: width of the dense layer before the two heads (0: none).

    Shapes: (batch, H, W, C) -> [(batch, d), (batch, d)].
    """
    _check_sizes(image_shape, latent_dim, filters)
    inputs = keras.Input(tuple(image_shape), name="image")
    h = inputs
    for f in filters:
        h = layers.Conv2D(int(f), 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    if dense_units:
        h = layers.Dense(dense_units, activation="relu")(h)
    z_mean = layers.Dense(latent_dim, name="z_mean")(h)
    # Zero-initialised: every code starts with unit variance, as the prior has.
    z_log_var = layers.Dense(latent_dim, kernel_initializer="zeros", name="z_log_var")(h)
    return keras.Model(inputs, [z_mean, z_log_var], name=name)


def build_decoder(latent_dim: int = 2, image_shape=(28, 28, 1), filters=(64, 32), dense_units: int = 128,
                  name: str = "decoder") -> keras.Model:
    """Convolutional decoder: z -> mean image in [0, 1] (a sigmoid output).

    Args:
        latent_dim: size d of the code z.
        image_shape: (H, W, C) of the output; H and W divisible by ``2 ** len(filters)``.
        filters: channels of each stride-2 transposed convolution (each doubles H and W).
        dense_units: width of a dense layer before the reshape (0: none).

    Shapes: (batch, d) -> (batch, H, W, C).
    """
    _check_sizes(image_shape, latent_dim, filters)
    height, width, channels = (int(s) for s in image_shape)
    factor = 2 ** len(filters)
    inputs = keras.Input((latent_dim,), name="z")
    h = inputs
    if dense_units:
        h = layers.Dense(dense_units, activation="relu")(h)
    h = layers.Dense((height // factor) * (width // factor) * int(filters[0]), activation="relu")(h)
    h = layers.Reshape((height // factor, width // factor, int(filters[0])))(h)
    for f in filters:
        h = layers.Conv2DTranspose(int(f), 3, strides=2, padding="same", activation="relu")(h)
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="mean")(h)
    return keras.Model(inputs, outputs, name=name)


def build_autoencoder(image_shape=(28, 28, 1), latent_dim: int = 2, filters=(32, 64), dense_units: int = 128,
                      name: str = "autoencoder") -> keras.Model:
    """A plain autoencoder: the encoder's mean head straight into the decoder (no noise, no KL).

    Train with ``compile(loss="mse")`` and ``fit(x, x)``. Its parts are
    ``get_layer("encoder")`` (image -> z, (batch, d)) and ``get_layer("decoder")``.
    Shapes: (batch, H, W, C) -> same.
    """
    full = build_encoder(image_shape, latent_dim, filters, dense_units)
    # Keep only the mean head: a deterministic code has no variance to learn.
    encoder = keras.Model(full.input, full.outputs[0], name="encoder")
    decoder = build_decoder(latent_dim, image_shape, tuple(reversed(filters)), dense_units)
    inputs = keras.Input(tuple(image_shape), name="image")
    z_mean = encoder(inputs)
    return keras.Model(inputs, decoder(z_mean), name=name)


# ---------------------------------------------------------------------------
# Schedules for beta (the KL weight), as functions of the optimizer step


class BetaSchedule:
    """Base class: ``schedule(step) -> beta`` for an int or a scalar tensor ``step``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="genlib")
class ConstantBeta(BetaSchedule):
    """beta(step) = beta. ``beta=1`` is the ELBO; ``beta > 1`` the beta-VAE of Higgins et al. (2017)."""

    def __init__(self, beta: float = 1.0):
        self.beta = _util.number("beta", beta, low=0.0)

    def __call__(self, step):
        return ops.cast(step, "float32") * 0.0 + self.beta

    def get_config(self):
        return {"beta": self.beta}


@keras.saving.register_keras_serializable(package="genlib")
class LinearWarmup(BetaSchedule):
    """Monotonic KL annealing (Bowman et al. 2016): 0 until ``start_step``, then linear up to ``beta``.

    beta(step) = beta * clip((step - start_step) / warmup_steps, 0, 1).
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 1000, start_step: int = 0):
        self.beta = _util.number("beta", beta, low=0.0)
        self.warmup_steps = _util.positive_int("warmup_steps", warmup_steps)
        self.start_step = _util.positive_int("start_step", start_step, 0)

    def __call__(self, step):
        t = (ops.cast(step, "float32") - self.start_step) / self.warmup_steps
        return self.beta * ops.clip(t, 0.0, 1.0)

    def get_config(self):
        return {"beta": self.beta, "warmup_steps": self.warmup_steps, "start_step": self.start_step}


@keras.saving.register_keras_serializable(package="genlib")
class CyclicalBeta(BetaSchedule):
    """Cyclical KL annealing (Fu et al. 2019), repeated every ``cycle_steps`` steps.

    Within a cycle at position ``t = (step mod cycle_steps) / cycle_steps`` in [0, 1):
    beta stays 0 for ``t < zero_fraction`` (a plain autoencoder that learns to use z), rises
    linearly over the next ``ramp_fraction`` and stays at ``beta`` for the rest.
    Fu et al.: ``zero_fraction=0, ramp_fraction=0.5``. The Optimus recipe (Li et al. 2020):
    ``zero_fraction=0.5, ramp_fraction=0.25``, used with free bits (``VAE(free_bits=...)``).
    After ``num_cycles`` cycles (if given) beta stays at ``beta``.
    """

    def __init__(self, beta: float = 1.0, cycle_steps: int = 1000, ramp_fraction: float = 0.5,
                 zero_fraction: float = 0.0, num_cycles: int | None = None):
        self.beta = _util.number("beta", beta, low=0.0)
        self.cycle_steps = _util.positive_int("cycle_steps", cycle_steps)
        self.zero_fraction = _util.fraction("zero_fraction", zero_fraction)
        self.ramp_fraction = _util.number("ramp_fraction", ramp_fraction, 0.0, 1.0, low_open=True)
        if self.zero_fraction + self.ramp_fraction > 1:
            raise ValueError("need zero_fraction + ramp_fraction <= 1, got "
                             f"ramp_fraction={ramp_fraction!r}, zero_fraction={zero_fraction!r}.")
        self.num_cycles = _util.optional_positive_int("num_cycles", num_cycles)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        t = ops.mod(step, float(self.cycle_steps)) / self.cycle_steps
        value = self.beta * ops.clip((t - self.zero_fraction) / self.ramp_fraction, 0.0, 1.0)
        if self.num_cycles is not None:
            value = ops.where(step >= self.num_cycles * self.cycle_steps, self.beta, value)
        return value

    def get_config(self):
        return {"beta": self.beta, "cycle_steps": self.cycle_steps, "ramp_fraction": self.ramp_fraction,
                "zero_fraction": self.zero_fraction, "num_cycles": self.num_cycles}


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class VAE(keras.Model):
    """A variational autoencoder trained on the negative ELBO with a weighted KL term.

    Likelihood: a Gaussian decoder, ``p(x|z) = N(x; decoder(z), diag(sigma^2))``, with one
    learned log-scale per pixel (the weight ``raw_log_sigma``; ``log_sigma()`` floors it at
    ``min_log_sigma``). It is a density on continuous data: train on dequantised images in [0, 1].

    Loss per example: ``-log p(x|z) + beta(step) * sum_j max(KL_j, free_bits)`` with
    ``z ~ q(z|x)`` by the reparameterisation trick; free bits (Kingma et al. 2016) stop the
    optimiser from pushing a latent unit's KL below ``free_bits`` nats (batch mean per unit).
    ``step`` counts training steps (a non-trainable variable, saved with the model).

    Args:
        encoder: image (batch, H, W, C) -> [z_mean, z_log_var], each (batch, d).
        decoder: z (batch, d) -> mean image (batch, H, W, C).
        beta: a float (constant) or a ``BetaSchedule`` of the training step.
        free_bits: nats per latent unit below which the KL is not penalised (0: plain ELBO).
        init_log_sigma: initial decoder log-scale.
        min_log_sigma: floor of the log-scale (default: one intensity level of 256, log(1/256)).
        seed: seed of the sampling layer.

    Tracked metrics: ``loss``, ``reconstruction`` (-log p(x|z) in nats per image), ``kl``
    (nats per image), ``active_units`` (latent units whose posterior mean varies across the
    batch by more than 0.01), ``beta``.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta=1.0, free_bits: float = 0.0,
                 init_log_sigma: float = -2.0, min_log_sigma: float = -math.log(256.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        image_shape = tuple(encoder.input_shape[1:])
        latent_dim = encoder.output_shape[0][-1] if isinstance(encoder.output_shape, list) else None
        if latent_dim is None or len(encoder.output_shape) != 2:
            raise ValueError(f"encoder must return [z_mean, z_log_var], got outputs {encoder.output_shape}.")
        if tuple(decoder.input_shape[1:]) != (latent_dim,):
            raise ValueError(f"decoder takes codes of shape {decoder.input_shape[1:]}, but the encoder "
                             f"makes codes of size {latent_dim}.")
        if tuple(decoder.output_shape[1:]) != image_shape:
            raise ValueError(f"decoder makes images of shape {tuple(decoder.output_shape[1:])}, but the encoder "
                             f"reads images of shape {image_shape}.")
        if len(image_shape) != 3:
            raise ValueError(f"encoder must read images (batch, H, W, C), got input shape {encoder.input_shape}.")
        self.encoder, self.decoder = encoder, decoder
        self.image_shape, self.latent_dim = image_shape, int(latent_dim)
        self.beta_schedule = beta if isinstance(beta, BetaSchedule) else ConstantBeta(beta)
        self.free_bits, self.seed = _util.number("free_bits", free_bits, low=0.0), seed
        self.init_log_sigma, self.min_log_sigma = float(init_log_sigma), float(min_log_sigma)
        self.sampling = Sampling(seed=seed, name="sampling")
        self.raw_log_sigma = self.add_weight(shape=image_shape, name="log_sigma",
                                             initializer=keras.initializers.Constant(init_log_sigma))
        # The model's own step count, not the optimizer's: JAX's fit computes the loss in a pure
        # function that sees only the model's variables, and a variable it assigns there comes back out.
        self.step = self.add_weight(shape=(), dtype="int32", name="step", initializer="zeros", trainable=False,
                                    aggregation="only_first_replica")
        self.prior_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "reconstruction", "kl", "active_units", "beta")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        self.built = True

    def log_sigma(self):
        """The decoder's per-pixel log sigma, floored at ``min_log_sigma``: shape (H, W, C)."""
        return ops.maximum(self.raw_log_sigma, self.min_log_sigma)

    def call(self, x, training=False):
        """Encode, sample z, decode. Returns a dict of (batch, ...) tensors:
        ``x_mean``, ``z``, ``z_mean``, ``z_log_var``."""
        _util.check_images(x, self.image_shape)
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling([z_mean, z_log_var])
        return {"x_mean": self.decoder(z, training=training), "z": z, "z_mean": z_mean, "z_log_var": z_log_var}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x = ops.convert_to_tensor(x, "float32")  # NumPy minus a tensor is an error on torch
        if y_pred is None:
            y_pred = self(x, training=training)
        # -log p(x|z): the Gaussian decoder's density of each pixel, summed over the image: (batch,)
        reconstruction = -ops.sum(normal_log_density(x, y_pred["x_mean"], self.log_sigma()), axis=(1, 2, 3))
        kl_per_unit = gaussian_kl(y_pred["z_mean"], y_pred["z_log_var"])  # (batch, d)
        kl = ops.sum(kl_per_unit, axis=-1)
        # Free bits act on each unit's batch-mean KL, so a unit may carry little information
        # about some images as long as it carries enough on average.
        kl_penalty = ops.sum(ops.maximum(ops.mean(kl_per_unit, axis=0), self.free_bits))
        beta = self.beta_schedule(self.step)
        if training:
            self.step.assign_add(1)
        loss = ops.mean(reconstruction) + beta * kl_penalty
        active = ops.sum(ops.cast(ops.var(y_pred["z_mean"], axis=0) > ACTIVE_UNIT_THRESHOLD, "float32"))
        for name, value in (("loss", loss), ("reconstruction", ops.mean(reconstruction)), ("kl", ops.mean(kl)),
                            ("active_units", active), ("beta", beta)):
            self.trackers[name].update_state(value)
        return loss

    # -- what the chapter calls --------------------------------------------------

    def encode(self, x):
        """(batch, H, W, C) -> (z_mean, z_log_var), each (batch, d)."""
        _util.check_images(x, self.image_shape)
        return self.encoder(x, training=False)

    def decode(self, z):
        """(batch, d) -> mean images (batch, H, W, C)."""
        return self.decoder(z, training=False)

    def reconstruct(self, x):
        """Decode the posterior mean: (batch, H, W, C) -> (batch, H, W, C), deterministic."""
        return self.decode(self.encode(x)[0])

    def generate(self, n: int, *, seed=None, batch_size: int = 1000, progress: bool | None = False) -> np.ndarray:
        """Mean images decoded from ``z ~ N(0, I)``: NumPy float32 (n, H, W, C) in [0, 1].

        Args:
            n: number of images.
            seed: int (the same seed and batch_size give the same images), or None: the model's
                own prior seed generator (seeded by ``seed`` of the model), advanced by each call.
            batch_size: codes decoded at once.
            progress: a progress bar over images (None: shown except under the smoke profile; off by
                default, as one decoder pass per batch is quick).
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        seed_generator = self.prior_seed if seed is None else keras.random.SeedGenerator(seed)
        out = []
        with _util.Progress(n, enabled=progress, unit="image", label="VAE sampling") as bar:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                z = keras.random.normal((m, self.latent_dim), seed=seed_generator)
                out.append(ops.convert_to_numpy(self.decode(z)))
                bar.update(start + m)
        return np.concatenate(out)

    def log_likelihood(self, x, num_samples: int = 64, batch_size: int = 100, progress: bool | None = None):
        """Importance-sampled lower bound on log p(x) in nats per image (Burda et al. 2016), NumPy (N,).

        ``log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)`` with ``z_k ~ q(z|x)``; K = ``num_samples``.
        It is at least the ELBO (K = 1) and tends to log p(x) as K grows. ``progress``: a
        progress bar over images (None: shown except under the smoke profile).
        """
        num_samples = _util.positive_int("num_samples", num_samples)
        batch_size = _util.positive_int("batch_size", batch_size)
        x = np.asarray(x, dtype="float32")
        out = []
        with _util.Progress(len(x), enabled=progress, unit="image", label="log-likelihood bound") as bar:
            for i in range(0, len(x), batch_size):
                xb = x[i: i + batch_size]
                z_mean, z_log_var = self.encode(xb)
                # Repeat each image K times along the batch axis: one decoder call per chunk.
                zm, zlv = ops.repeat(z_mean, num_samples, axis=0), ops.repeat(z_log_var, num_samples, axis=0)
                xr = ops.repeat(ops.convert_to_tensor(xb), num_samples, axis=0)
                z = self.sampling([zm, zlv])
                log_w = (ops.sum(normal_log_density(xr, self.decode(z), self.log_sigma()), axis=(1, 2, 3))
                         + diagonal_normal_log_density(z, ops.zeros_like(z), ops.zeros_like(z))
                         - diagonal_normal_log_density(z, zm, zlv))
                log_w = ops.reshape(log_w, (len(xb), num_samples))
                out.append(ops.convert_to_numpy(ops.logsumexp(log_w, axis=1) - math.log(num_samples)))
                bar.update(i + len(xb))
        return np.concatenate(out)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": keras.saving.serialize_keras_object(self.beta_schedule),
            "free_bits": self.free_bits,
            "init_log_sigma": self.init_log_sigma,
            "min_log_sigma": self.min_log_sigma,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**_util.deserialize(config, "encoder", "decoder", "beta"))
