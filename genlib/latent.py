"""Latent generative modelling: a KL-regularised convolutional autoencoder, and a generator in its latent space.

Chapter 11 (chapters/11_flow_matching.ipynb) trains flow matching in this latent space; chapter
12 (chapters/12_multimodal.ipynb) reuses the autoencoder for text-to-image.

Latent diffusion (Rombach et al. 2022) splits image generation in two. An autoencoder does the
*perceptual* compression: a spatial code ``z`` of shape (H/f, W/f, c), with ``f = 2^len(filters)``,
from which the decoder restores the image. A generative model (here flow matching, any model
with ``generate``) then learns the *semantic* part, the distribution of codes, on f^2 times
fewer positions, so every one of its many sampling steps is cheaper.

* ``build_latent_encoder`` / ``build_latent_decoder``: the two convolutional networks.
* ``LatentAutoencoder``: trains them on ``reconstruction + kl_weight * KL`` with a tiny KL
  weight (Stable Diffusion's recipe: the KL term only keeps the codes from drifting to huge
  values, it does not make them Gaussian), measures a **latent scale factor** from data, and
  maps images to and from the scaled latents a generator trains on.
* ``LatentGenerator``: an autoencoder plus a generative model of its scaled latents, with the
  shared ``generate`` API.

The encoder's Gaussian posterior, its reparameterised sample and its KL divergence are the
VAE's (``genlib.vae.Sampling``, ``genlib.vae.gaussian_kl``), applied per latent element.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib import _util
from genlib.vae import Sampling, gaussian_kl


def _check(image_shape, latent_channels, filters):
    image_shape = _util.shape("image_shape (H, W, C)", image_shape, rank=3)
    latent_channels = _util.positive_int("latent_channels", latent_channels)
    if not filters:
        raise ValueError(f"filters must be a non-empty list of positive ints, got {filters!r}.")
    filters = _util.shape("filters", filters)
    factor = 2 ** len(filters)
    if image_shape[0] % factor or image_shape[1] % factor:
        raise ValueError(f"image height and width must be divisible by 2**len(filters) = {factor} (one halving "
                         f"per entry of filters), got {image_shape!r}.")
    return image_shape, latent_channels, filters


def build_latent_encoder(image_shape=(32, 32, 1), latent_channels: int = 4, filters=(32, 64),
                         name: str = "encoder") -> keras.Model:
    """Convolutional encoder: image -> [z_mean, z_log_var], a diagonal Gaussian per latent element.

    A 3×3 stem, then per entry ``f`` of ``filters`` a stride-2 3×3 convolution to ``f`` channels
    (halving H and W) and a residual 3×3 convolution; 1×1 heads give the mean and log-variance.

    Shapes: (batch, H, W, C) -> [(batch, H/s, W/s, latent_channels)] * 2 with s = 2^len(filters).
    """
    image_shape, latent_channels, filters = _check(image_shape, latent_channels, filters)
    inputs = keras.Input(image_shape, name="image")
    h = layers.Conv2D(filters[0], 3, padding="same", activation="silu")(inputs)
    for f in filters:
        h = layers.Conv2D(f, 3, strides=2, padding="same", activation="silu")(h)
        h = layers.Add()([h, layers.Conv2D(f, 3, padding="same", activation="silu")(h)])
    z_mean = layers.Conv2D(latent_channels, 1, name="z_mean")(h)
    # Zero-initialised: every element starts with unit variance, as a VAE's prior has.
    z_log_var = layers.Conv2D(latent_channels, 1, kernel_initializer="zeros", name="z_log_var")(h)
    return keras.Model(inputs, [z_mean, z_log_var], name=name)


def build_latent_decoder(latent_shape=(8, 8, 4), image_channels: int = 1, filters=(64, 32),
                         name: str = "decoder") -> keras.Model:
    """Convolutional decoder: latent (batch, h, w, c) -> image (batch, h 2^k, w 2^k, image_channels), k = len(filters).

    A 3×3 convolution to ``filters[0]`` channels, then per entry ``f`` a residual 3×3 convolution,
    nearest-neighbour upsampling and a 3×3 convolution to ``f`` channels; a linear 3×3 output
    (the images' value range is the training data's, e.g. [-1, 1]).
    """
    latent_shape = _util.shape("latent_shape (h, w, c)", latent_shape, rank=3)
    image_channels = _util.positive_int("image_channels", image_channels)
    if not filters:
        raise ValueError(f"filters must be a non-empty list of positive ints, got {filters!r}.")
    filters = _util.shape("filters", filters)
    inputs = keras.Input(latent_shape, name="z")
    h = layers.Conv2D(filters[0], 3, padding="same", activation="silu")(inputs)
    for f in filters:
        h = layers.Add()([h, layers.Conv2D(h.shape[-1], 3, padding="same", activation="silu")(h)])
        h = layers.UpSampling2D(2)(h)
        h = layers.Conv2D(f, 3, padding="same", activation="silu")(h)
    outputs = layers.Conv2D(image_channels, 3, padding="same", name="image")(h)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="genlib")
class LatentAutoencoder(keras.Model):
    """A KL-regularised autoencoder with a spatial latent, as in latent diffusion (the "KL-f" autoencoders).

    Loss per image: ``sum_pixels |x - decoder(z)| + kl_weight * sum_elements KL(q(z|x) || N(0, 1))``
    with ``z ~ q(z|x)`` by the reparameterisation trick (the L1 reconstruction and the per-image
    sums of Stable Diffusion's autoencoder; its perceptual and adversarial terms are left out).
    With ``kl_weight`` around 1e-6 the KL term hardly shapes the codes; it keeps their scale
    from drifting. The **scale factor** ``1 / std(z_mean)`` over the data (``fit_scale_factor``)
    then brings the codes to unit variance, the scale a flow-matching or diffusion model's noise
    assumes (Stable Diffusion's 0.18215 was found this way).

    Args:
        image_shape: (H, W, C); H and W divisible by 2^len(filters).
        latent_channels: channels c of the latent (batch, H/s, W/s, c), s = 2^len(filters).
        filters: channels per halving of the encoder (the decoder mirrors them).
        kl_weight: the KL term's weight (>= 0).
        value_range: (low, high) of the images; decoded images are clipped to it.
        seed: seed of the reparameterisation noise.

    Tracked metrics: ``loss``, ``reconstruction`` (per image), ``kl`` (nats per image).
    """

    def __init__(self, image_shape=(32, 32, 1), latent_channels: int = 4, filters=(32, 64), kl_weight: float = 1e-6,
                 value_range=(-1.0, 1.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape, self.latent_channels, self.filters = _check(image_shape, latent_channels, filters)
        self.kl_weight = _util.number("kl_weight", kl_weight, low=0.0)
        if len(tuple(value_range)) != 2 or not float(value_range[0]) < float(value_range[1]):
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}.")
        self.value_range, self.seed = (float(value_range[0]), float(value_range[1])), seed
        s = self.downsampling
        self.latent_shape = (self.image_shape[0] // s, self.image_shape[1] // s, self.latent_channels)
        self.encoder = build_latent_encoder(self.image_shape, self.latent_channels, self.filters)
        self.decoder = build_latent_decoder(self.latent_shape, self.image_shape[-1], tuple(reversed(self.filters)))
        self.sampling = Sampling(seed=seed, name="sampling")
        # A weight, not a Python float, so that it is saved with the model.
        self.scale_factor = self.add_weight(shape=(), initializer="ones", trainable=False, name="scale_factor")
        self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "reconstruction", "kl")}

    @property
    def downsampling(self) -> int:
        """The factor s by which height and width shrink: 2^len(filters)."""
        return 2 ** len(self.filters)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        self.built = True

    def call(self, x, training=False):
        """Encode, sample z, decode: a dict of ``x_hat``, ``z``, ``z_mean``, ``z_log_var``."""
        _util.check_images(x, self.image_shape)
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling([z_mean, z_log_var])
        return {"x_hat": self.decoder(z, training=training), "z": z, "z_mean": z_mean, "z_log_var": z_log_var}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x = ops.convert_to_tensor(x, "float32")
        if y_pred is None:
            y_pred = self(x, training=training)
        reconstruction = ops.mean(ops.sum(ops.abs(x - y_pred["x_hat"]), axis=(1, 2, 3)))
        kl = ops.mean(ops.sum(gaussian_kl(y_pred["z_mean"], y_pred["z_log_var"]), axis=(1, 2, 3)))
        loss = reconstruction + self.kl_weight * kl
        for name, value in (("loss", loss), ("reconstruction", reconstruction), ("kl", kl)):
            self.trackers[name].update_state(value)
        return loss

    # -- what the chapters call -----------------------------------------------------

    def encode(self, x, batch_size: int = 500) -> np.ndarray:
        """Posterior means z_mean (unscaled), NumPy (batch, h, w, c)."""
        x = np.asarray(x, "float32")
        _util.check_images(x, self.image_shape)
        batch_size = _util.positive_int("batch_size", batch_size)
        return np.concatenate([ops.convert_to_numpy(self.encoder(x[i: i + batch_size], training=False)[0])
                               for i in range(0, len(x), batch_size)])

    def decode(self, z, batch_size: int = 500) -> np.ndarray:
        """Images from unscaled latents, clipped to ``value_range``: NumPy (batch, H, W, C)."""
        z = np.asarray(z, "float32")
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"expected latents of shape (batch, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(z.shape)}.")
        batch_size = _util.positive_int("batch_size", batch_size)
        out = np.concatenate([ops.convert_to_numpy(self.decoder(z[i: i + batch_size], training=False))
                              for i in range(0, len(z), batch_size)])
        return np.clip(out, *self.value_range)

    def reconstruct(self, x, batch_size: int = 500) -> np.ndarray:
        """Decode the posterior mean: images -> images, deterministic."""
        return self.decode(self.encode(x, batch_size), batch_size)

    def fit_scale_factor(self, x, batch_size: int = 500) -> float:
        """Set ``scale_factor`` to ``1 / std(z_mean)`` over images ``x`` (all elements pooled); returns it."""
        std = float(np.std(self.encode(x, batch_size)))
        if not np.isfinite(std) or std <= 0:
            raise ValueError(f"the codes of these images have standard deviation {std}; cannot scale them.")
        self.scale_factor.assign(1.0 / std)
        return 1.0 / std

    def to_latent(self, x, batch_size: int = 500) -> np.ndarray:
        """The scaled latents a generator trains on: ``scale_factor * z_mean``, NumPy (batch, h, w, c)."""
        return self.encode(x, batch_size) * float(ops.convert_to_numpy(self.scale_factor))

    def from_latent(self, z, batch_size: int = 500) -> np.ndarray:
        """Images from scaled latents: ``decode(z / scale_factor)``."""
        return self.decode(np.asarray(z, "float32") / float(ops.convert_to_numpy(self.scale_factor)), batch_size)

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape),
                "latent_channels": self.latent_channels, "filters": list(self.filters), "kl_weight": self.kl_weight,
                "value_range": list(self.value_range), "seed": self.seed}


@keras.saving.register_keras_serializable(package="genlib")
class LatentGenerator(keras.Model):
    """A generator of images that samples scaled latents with ``prior`` and decodes them with ``autoencoder``.

    ``prior`` is any genlib model with ``generate`` whose samples have the autoencoder's
    ``latent_shape`` and are *not* clipped to an image range (e.g.
    ``FlowMatchingModel(image_shape=autoencoder.latent_shape, clip=None)``), trained on
    ``autoencoder.to_latent(images)``.

    Args:
        autoencoder: a trained ``LatentAutoencoder`` (its ``scale_factor`` fitted).
        prior: the latent-space generative model.
    """

    def __init__(self, autoencoder: LatentAutoencoder, prior: keras.Model, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(autoencoder, LatentAutoencoder):
            raise ValueError(f"autoencoder must be a LatentAutoencoder, got {type(autoencoder).__name__}.")
        shape = getattr(prior, "image_shape", None)
        if shape is None or tuple(shape) != autoencoder.latent_shape:
            raise ValueError(f"the prior must model latents of shape {autoencoder.latent_shape}, got {shape}.")
        if not callable(getattr(prior, "generate", None)):
            raise ValueError(f"the prior ({type(prior).__name__}) has no generate method.")
        self.autoencoder, self.prior = autoencoder, prior
        self.image_shape = autoencoder.image_shape
        self.build()

    def build(self, input_shape=None):
        if not self.prior.built:
            self.prior.build()
        self.built = True

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 500, progress=None,
                 **options) -> np.ndarray:
        """Images (n, H, W, C) in the autoencoder's value range: latents from ``prior.generate(n, seed=...,
        batch_size=..., progress=..., **options)`` (e.g. ``steps``, ``solver``, ``labels``, ``guidance``), decoded."""
        z = self.prior.generate(n, seed=seed, batch_size=batch_size, progress=progress, **options)
        return self.autoencoder.from_latent(z, batch_size)

    def get_config(self):
        return {**super().get_config(), "autoencoder": keras.saving.serialize_keras_object(self.autoencoder),
                "prior": keras.saving.serialize_keras_object(self.prior)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("autoencoder", "prior"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
