"""StyleGAN in miniature: the ideas that made GANs photorealistic, small enough for a laptop.

Chapter 9 (chapters/09_advanced_gans.ipynb). It builds on chapter 3's GAN (``genlib.gan``):
the same non-saturating losses (``gan.discriminator_loss``, ``gan.generator_loss``), a
different generator, a stabilised discriminator.

The generator (StyleGAN, Karras et al. 2019; StyleGAN2, Karras et al. 2020):

* ``MappingNetwork``: an MLP z -> w on the normalised z, with a tracked average ``w_avg``
  for the **truncation trick** ``w_avg + psi (w - w_avg)``.
* ``SynthesisNetwork``: from a learned 4x4 constant, ``SynthesisLayer``s (a ``ModulatedConv2D``
  with **weight demodulation**, a **noise input** with a learned strength, bias, activation)
  and ``ToRGB`` skip outputs summed over resolutions; one w per layer, so styles can be
  **mixed** (``mix_styles``).

The layers (``ModulatedConv2D``, ``SynthesisLayer``, ``ToRGB``, AdaIN, the **equalised learning
rate**) are in ``genlib.style_layers``; the discriminator and its stabilisers (``MinibatchStdDev``,
``r1_penalty``, applied lazily here; SAGAN's ``SelfAttention``, **spectral normalisation**) in
``genlib.discriminators``. This module adds the **EMA generator**.

``StyleGAN`` trains it all with ``fit`` (a ``_util.TrainStepModel`` with two optimizers) and
samples with ``generate(n, seed=..., truncation_psi=...)``. ``path_length`` measures how
smoothly images change along a path in Z or W. (``training.WallClockBudget`` stops ``fit`` after a
fixed time, so the chapter compares two models at the same budget.)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib import _util, gan
from genlib.discriminators import MinibatchStdDev, r1_penalty
from genlib.style_layers import EqualizedDense, SynthesisLayer, ToRGB, upsample2x

# ---------------------------------------------------------------------------
# Mapping and synthesis networks


def normalize_2nd_moment(z, epsilon=1e-8):
    """``z / sqrt(mean(z^2))`` per row: every latent on the sphere of radius sqrt(dim). (batch, d) -> (batch, d)."""
    return z * ops.rsqrt(ops.mean(ops.square(z), axis=-1, keepdims=True) + epsilon)


@keras.saving.register_keras_serializable(package="genlib")
class MappingNetwork(layers.Layer):
    """z -> w: an MLP on the normalised latent, and the running average ``w_avg`` of w.

    Args:
        z_dim: length of z.
        w_dim: length of w.
        depth: number of dense layers (StyleGAN uses 8).
        lr_multiplier: relative learning rate of its layers (0.01 as in StyleGAN).
        w_avg_beta: decay of the moving average, ``w_avg <- beta w_avg + (1 - beta) mean_batch(w)``.

    Shapes: z (batch, z_dim) -> w (batch, w_dim).
    """

    def __init__(self, z_dim=64, w_dim=64, depth=4, lr_multiplier=0.01, w_avg_beta=0.995, **kwargs):
        super().__init__(**kwargs)
        self.z_dim = _util.positive_int("z_dim", z_dim)
        self.w_dim = _util.positive_int("w_dim", w_dim)
        self.depth = _util.positive_int("depth", depth)
        self.lr_multiplier = _util.number("lr_multiplier", lr_multiplier, 0.0, low_open=True)
        self.w_avg_beta = _util.fraction("w_avg_beta", w_avg_beta)
        self.dense = [EqualizedDense(self.w_dim, lr_multiplier=self.lr_multiplier, activation="lrelu",
                                     name=f"dense_{i}") for i in range(self.depth)]

    def build(self, z_shape):
        shape = (None, self.z_dim)
        for layer in self.dense:
            layer.build(shape)
            shape = (None, self.w_dim)
        self.w_avg = self.add_weight(name="w_avg", shape=(self.w_dim,), initializer="zeros", trainable=False)

    def call(self, z):
        h = normalize_2nd_moment(z)
        for layer in self.dense:
            h = layer(h)
        return h

    def update_w_avg(self, w):
        """Move ``w_avg`` towards the batch mean of ``w`` (batch, w_dim): ``beta w_avg + (1 - beta) mean(w)``."""
        mean = ops.mean(ops.stop_gradient(ops.convert_to_tensor(w, "float32")), axis=0)
        self.w_avg.assign(self.w_avg_beta * self.w_avg + (1.0 - self.w_avg_beta) * mean)

    def truncate(self, w, psi):
        """The truncation trick: ``w_avg + psi (w - w_avg)``; psi = 1 changes nothing, psi = 0 gives w_avg.

        Works for w of shape (batch, w_dim) or (batch, num_ws, w_dim).
        """
        psi = _util.number("truncation_psi", psi)
        return self.w_avg + psi * (w - self.w_avg)

    def get_config(self):
        return {**super().get_config(), "z_dim": self.z_dim, "w_dim": self.w_dim, "depth": self.depth,
                "lr_multiplier": self.lr_multiplier, "w_avg_beta": self.w_avg_beta}


def mix_styles(w1, w2, crossover, num_ws):
    """Per-layer styles: layers ``< crossover`` take ``w1``, layers ``>= crossover`` take ``w2``.

    Args:
        w1, w2: (batch, w_dim) styles.
        crossover: (batch,) ints in [0, num_ws]; ``num_ws`` keeps w1 everywhere, 0 takes w2 everywhere.
        num_ws: number of layers that take a style.

    Returns (batch, num_ws, w_dim).
    """
    num_ws = _util.positive_int("num_ws", num_ws)
    layer = ops.arange(num_ws, dtype="int32")[None, :, None]
    crossover = ops.reshape(ops.cast(crossover, "int32"), (-1, 1, 1))
    return ops.where(layer < crossover, ops.expand_dims(w1, 1), ops.expand_dims(w2, 1))


@keras.saving.register_keras_serializable(package="genlib")
class SynthesisNetwork(layers.Layer):
    """ws -> image: a learned 4x4 constant, then ``SynthesisLayer``s with ``ToRGB`` skip outputs.

    Resolution 4 has one synthesis layer; each further resolution (twice the last) has an
    upsampling layer and a plain one. Every resolution's ``ToRGB`` output is added to the
    upsampled sum of the coarser ones (StyleGAN2's skip generator, in place of ProGAN's
    progressive growing). Layer i takes style ``ws[:, i]``; a resolution's ``ToRGB`` takes
    the style of that resolution's last layer.

    Args:
        channels: feature channels per resolution, from 4x4 up; the output side is
            ``4 * 2**(len(channels) - 1)`` (``(64, 64, 32)``: 16x16).
        w_dim: length of w.
        image_channels: channels of the output image.
        seed: seed of the noise drawn when ``call`` is given none.

    Call ``net(ws, noise=None)``: ws (batch, num_ws, w_dim) or (batch, w_dim) (the same w
    for every layer); noise a list of ``num_ws`` maps (batch, r, r, 1) (shapes from
    ``noise_shapes``), or None to draw them. Returns (batch, S, S, image_channels),
    unbounded (about [-1, 1] once trained); ``return_rgbs=True`` also returns each
    resolution's ToRGB output.
    """

    def __init__(self, channels=(64, 64, 32), w_dim=64, image_channels=1, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, (int, np.integer)) or not len(channels):
            raise ValueError(f"channels must be a non-empty sequence of ints (one per resolution), got {channels!r}.")
        self.channels = tuple(_util.positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        self.w_dim = _util.positive_int("w_dim", w_dim)
        self.image_channels = _util.positive_int("image_channels", image_channels)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.resolutions = tuple(4 * 2**i for i in range(len(self.channels)))
        self.resolution = self.resolutions[-1]
        self.layer_resolutions = [4] + [r for r in self.resolutions[1:] for _ in range(2)]
        self.num_ws = len(self.layer_resolutions)
        self.convs, self.to_rgbs = [], []
        for i, (r, c) in enumerate(zip(self.resolutions, self.channels)):
            if i:
                self.convs.append(SynthesisLayer(c, upsample=True, name=f"conv_{r}_up"))
            self.convs.append(SynthesisLayer(c, name=f"conv_{r}"))
            self.to_rgbs.append(ToRGB(self.image_channels, name=f"to_rgb_{r}"))

    def build(self, ws_shape=None):
        self.const = self.add_weight(name="const", shape=(4, 4, self.channels[0]),
                                     initializer=keras.initializers.RandomNormal(0.0, 1.0))
        w_shape = (None, self.w_dim)
        shape = (None, 4, 4, self.channels[0])
        for conv, r in zip(self.convs, self.layer_resolutions):
            conv.build(shape, w_shape, (None, r, r, 1))
            shape = (None, r, r, conv.filters)
            if conv is self.convs[self._last_layer(r)]:
                self.to_rgbs[self.resolutions.index(r)].build(shape, w_shape)

    def _last_layer(self, r):
        return max(i for i, lr in enumerate(self.layer_resolutions) if lr == r)

    def noise_shapes(self, batch):
        """Shapes of the noise maps, one per synthesis layer: (batch, r, r, 1)."""
        return [(batch, r, r, 1) for r in self.layer_resolutions]

    def draw_noise(self, batch, seed=None):
        """A list of ``num_ws`` N(0, 1) noise maps; ``seed``: int or SeedGenerator (default: the network's own)."""
        if seed is None:
            seed = self.seed_generator
        elif not isinstance(seed, keras.random.SeedGenerator):
            seed = keras.random.SeedGenerator(seed)  # an int seed alone would give equal maps of equal shapes
        return [keras.random.normal(shape, seed=seed) for shape in self.noise_shapes(batch)]

    def call(self, ws, noise=None, return_rgbs=False):
        if len(ws.shape) == 2:
            ws = ops.repeat(ops.expand_dims(ws, 1), self.num_ws, axis=1)
        batch = ops.shape(ws)[0]
        if noise is None:
            noise = self.draw_noise(batch)
        if len(noise) != self.num_ws:
            raise ValueError(f"noise must be a list of {self.num_ws} maps, got {len(noise)}.")
        x = ops.broadcast_to(self.const[None], (batch, 4, 4, self.channels[0]))
        image, rgbs = None, []
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], noise[i])
            r = self.layer_resolutions[i]
            if i == self._last_layer(r):
                rgb = self.to_rgbs[self.resolutions.index(r)](x, ws[:, i])
                rgbs.append(rgb)
                image = rgb if image is None else upsample2x(image) + rgb
        return (image, rgbs) if return_rgbs else image

    def get_config(self):
        return {**super().get_config(), "channels": list(self.channels), "w_dim": self.w_dim,
                "image_channels": self.image_channels, "seed": self.seed}


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class StyleGAN(_util.TrainStepModel):
    """StyleGAN2 in miniature: mapping + synthesis against a discriminator, R1, style mixing, EMA.

    Each training step: one discriminator step (non-saturating loss on the real batch and as
    many fakes; every ``r1_interval``-th step also ``r1_gamma / 2 * r1_interval * R1``, the
    **lazy** R1 of StyleGAN2, the same average penalty at a fraction of the cost), then one
    generator step (mapping and synthesis together, styles mixed with probability
    ``style_mixing``), then ``w_avg`` and the **EMA generator** move.

    Args:
        mapping: a ``MappingNetwork``.
        synthesis: a ``SynthesisNetwork`` with the same ``w_dim``.
        discriminator: images -> (batch, 1) logits (``build_discriminator``).
        r1_gamma: gamma, the weight of the R1 penalty (0: none).
        r1_interval: apply R1 every this many steps.
        style_mixing: probability that a fake is made from two latents (crossover at a random layer).
        ema_decay: decay of the EMA generator's weights; early on ``min(ema_decay, (1 + t) / (10 + t))``
            at generator step t, so a short run's average does not remember the random start.
        seed: seed of the latents, noise and mixing drawn in training.

    ``compile(d_optimizer=..., g_optimizer=...)``; ``fit(x)`` on images in [-1, 1] (the batch a
    multiple of the discriminator's minibatch-std group); ``generate(n, truncation_psi=...)``.
    Metrics: ``d_loss``, ``g_loss``, ``r1`` (on the steps that compute it), ``d_real``, ``d_fake``.
    """

    metric_names = ("d_loss", "g_loss", "r1", "d_real", "d_fake")

    def __init__(self, mapping, synthesis, discriminator, r1_gamma=1.0, r1_interval=4, style_mixing=0.9,
                 ema_decay=0.99, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(mapping, MappingNetwork) or not isinstance(synthesis, SynthesisNetwork):
            raise ValueError(f"mapping and synthesis must be a MappingNetwork and a SynthesisNetwork, got "
                             f"{type(mapping).__name__} and {type(synthesis).__name__}.")
        if not isinstance(discriminator, keras.Model):
            raise ValueError(f"discriminator must be a keras Model, got {type(discriminator).__name__}.")
        if mapping.w_dim != synthesis.w_dim:
            raise ValueError(f"mapping gives w of {mapping.w_dim} numbers, synthesis expects {synthesis.w_dim}.")
        image_shape = (synthesis.resolution, synthesis.resolution, synthesis.image_channels)
        if tuple(discriminator.inputs[0].shape[1:]) != image_shape:
            raise ValueError(f"the discriminator takes {tuple(discriminator.inputs[0].shape[1:])}, "
                             f"the synthesis network makes {image_shape}.")
        self.mapping, self.synthesis, self.discriminator = mapping, synthesis, discriminator
        self.r1_gamma = _util.number("r1_gamma", r1_gamma, low=0.0)
        self.r1_interval = _util.positive_int("r1_interval", r1_interval)
        self.style_mixing = _util.fraction("style_mixing", style_mixing, closed=True)
        self.ema_decay = _util.fraction("ema_decay", ema_decay)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.z_dim, self.num_ws, self.image_shape = mapping.z_dim, synthesis.num_ws, image_shape
        for net in (mapping, synthesis):
            if not net.built:
                net.build(None)
        # The EMA generator: same architecture, weights averaged over training; what generate samples.
        self.mapping_ema = MappingNetwork.from_config({**mapping.get_config(), "name": "mapping_ema"})
        self.synthesis_ema = SynthesisNetwork.from_config({**synthesis.get_config(), "name": "synthesis_ema"})
        for ema, net in ((self.mapping_ema, mapping), (self.synthesis_ema, synthesis)):
            ema.build(None)
            for e, v in zip(ema.weights, net.weights):
                e.assign(ops.convert_to_numpy(v))  # a copy: JAX must not see two variables share one buffer
            ema.trainable = False
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.built = True  # every net is built; nothing else to create

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        """Two optimizers (default Adam(2e-3, beta_1=0, beta_2=0.99), StyleGAN2's settings)."""
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(2e-3, beta_1=0.0, beta_2=0.99, epsilon=1e-8)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(2e-3, beta_1=0.0, beta_2=0.99, epsilon=1e-8)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator_variables)
        super().compile(optimizer=_util.OptimizerGroup([self.d_optimizer, self.g_optimizer]), **kwargs)

    def get_compile_config(self):
        return None  # a saved model is for sampling; the optimizers are chosen again to train on

    @property
    def generator_variables(self):
        return self.mapping.trainable_variables + self.synthesis.trainable_variables

    def call(self, z, training=False):
        """The EMA generator on latents z (batch, z_dim), with fresh noise."""
        return self.synthesis_ema(self.mapping_ema(z))

    # -- training ----------------------------------------------------------------------------

    def mixed_styles(self, n):
        """Styles for ``n`` fakes: (ws (n, num_ws, w_dim), w of the first latents (n, w_dim)).

        With probability ``style_mixing`` an image takes a second latent's w from a random layer on.
        """
        z1 = keras.random.normal((n, self.z_dim), seed=self.seed_generator)
        z2 = keras.random.normal((n, self.z_dim), seed=self.seed_generator)
        w1, w2 = self.mapping(z1), self.mapping(z2)
        crossover = keras.random.randint((n,), 1, max(self.num_ws, 2), seed=self.seed_generator)
        mixed = keras.random.uniform((n,), seed=self.seed_generator) < self.style_mixing
        crossover = ops.where(mixed, crossover, self.num_ws)
        return mix_styles(w1, w2, crossover, self.num_ws), w1

    def discriminator_step(self, real):
        """One update of D (with lazy R1): returns (loss, R1 or 0, whether R1 was computed, D(real), D(fake))."""
        n = ops.shape(real)[0]
        ws, _ = self.mixed_styles(n)
        fake = self.synthesis(ws, self.synthesis.draw_noise(n, self.seed_generator))
        do_r1 = ops.logical_and(self.r1_gamma > 0, ops.equal(self.d_optimizer.iterations % self.r1_interval, 0))
        weight = 0.5 * self.r1_gamma * self.r1_interval

        def loss_fn():
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            loss = gan.discriminator_loss(real_logits, fake_logits)
            # Lazy: the branch not taken is not computed.
            r1 = ops.cond(do_r1, lambda: r1_penalty(self.discriminator, real), lambda: ops.zeros(()))
            return loss + weight * r1, (loss, r1, real_logits, fake_logits)

        _, (loss, r1, real_logits, fake_logits), grads = _util.value_and_grad(
            loss_fn, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)
        return loss, r1, do_r1, ops.mean(ops.sigmoid(real_logits)), ops.mean(ops.sigmoid(fake_logits))

    def generator_step(self, n):
        """One update of mapping and synthesis on ``n`` fakes, then w_avg and the EMA: returns G's loss."""
        noise = self.synthesis.draw_noise(n, self.seed_generator)

        def loss_fn():
            ws, w = self.mixed_styles(n)
            fake = self.synthesis(ws, noise)
            return gan.generator_loss(self.discriminator(fake, training=False)), w

        variables = self.generator_variables
        loss, w, grads = _util.value_and_grad(loss_fn, variables)
        self.g_optimizer.apply(grads, variables)
        self.mapping.update_w_avg(w)
        self.update_ema()
        return loss

    def update_ema(self):
        """EMA generator <- decay * EMA + (1 - decay) * generator; ``w_avg`` is copied as it is."""
        t = ops.cast(self.g_optimizer.iterations, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + t) / (10.0 + t))
        for ema, net in ((self.mapping_ema, self.mapping), (self.synthesis_ema, self.synthesis)):
            for e, v in zip(ema.weights, net.weights):
                if v.trainable:
                    e.assign(decay * e + (1.0 - decay) * v)
                else:
                    e.assign(v)

    def training_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        group = self._mbstd_group()
        if group and real.shape[0] is not None and real.shape[0] > group and real.shape[0] % group:
            raise ValueError(f"batch size {real.shape[0]} must be a multiple of the minibatch-std group {group}; "
                             "use a training set that is a multiple of the batch size.")
        d_loss, r1, did_r1, d_real, d_fake = self.discriminator_step(real)
        g_loss = self.generator_step(ops.shape(real)[0])
        for name, value in (("d_loss", d_loss), ("g_loss", g_loss), ("d_real", d_real), ("d_fake", d_fake)):
            self.trackers[name].update_state(value)
        self.trackers["r1"].update_state(r1, sample_weight=ops.cast(did_r1, "float32"))
        return {name: t.result() for name, t in self.trackers.items()}

    def _mbstd_group(self):
        groups = [layer.group_size for layer in self.discriminator.layers if isinstance(layer, MinibatchStdDev)]
        return groups[0] if groups else 0

    # -- sampling -----------------------------------------------------------------------------

    def nets(self, ema=True):
        """``(mapping, synthesis)``: the EMA generator's (default) or the trained ones."""
        return (self.mapping_ema, self.synthesis_ema) if ema else (self.mapping, self.synthesis)

    def synthesize(self, ws, noise=None, *, ema=True):
        """Images from styles ``ws`` ((batch, w_dim) or (batch, num_ws, w_dim)) as NumPy, clipped to [-1, 1].

        ``noise``: a list of maps (``SynthesisNetwork.noise_shapes``), ``"zero"`` for none, or
        None for fresh noise.
        """
        synthesis = self.nets(ema)[1]
        ws = ops.convert_to_tensor(ws, "float32")
        if isinstance(noise, str):
            _util.choice("noise", noise, ("zero",))
            noise = [ops.zeros(s) for s in synthesis.noise_shapes(ws.shape[0])]
        return np.clip(ops.convert_to_numpy(synthesis(ws, noise)), -1.0, 1.0)

    def generate(self, n, *, seed=None, batch_size=256, progress=None, truncation_psi=1.0, ema=True) -> np.ndarray:
        """``n`` images (n, S, S, C) as NumPy, in **[-1, 1]** (the data's range; outputs are clipped).

        Args:
            n: number of samples.
            seed: int for reproducible samples (latents and noise); None draws from the model's generator.
            batch_size: samples per network call.
            progress: show a progress bar (None: the book's default, quiet under ``smoke`` and for a
                single batch).
            truncation_psi: psi of the truncation trick, ``w = w_avg + psi (w - w_avg)``; 1 = none.
            ema: sample the EMA generator (True) or the trained one.
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        psi = _util.number("truncation_psi", truncation_psi)
        mapping, synthesis = self.nets(ema)
        gen = keras.random.SeedGenerator(seed) if seed is not None else self.seed_generator
        # All latents and noise drawn first, so a seed gives the same samples at any batch size.
        z = keras.random.normal((n, self.z_dim), seed=gen)
        noise = synthesis.draw_noise(n, gen)
        out = []
        if progress is None and n <= batch_size:
            progress = False  # one network call: nothing to follow
        with _util.Progress(n, enabled=progress, unit="sample", label="StyleGAN samples") as bar:
            for i in range(0, n, batch_size):
                j = min(n, i + batch_size)
                w = mapping.truncate(mapping(z[i:j]), psi)
                images = synthesis(w, [m[i:j] for m in noise])
                out.append(np.clip(ops.convert_to_numpy(images), -1.0, 1.0))
                bar.update(j)
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "mapping": keras.saving.serialize_keras_object(self.mapping),
                "synthesis": keras.saving.serialize_keras_object(self.synthesis),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator),
                "r1_gamma": self.r1_gamma, "r1_interval": self.r1_interval, "style_mixing": self.style_mixing,
                "ema_decay": self.ema_decay, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**_util.deserialize(config, "mapping", "synthesis", "discriminator"))


# ---------------------------------------------------------------------------
# Measuring


def path_length(model, n, *, space="w", epsilon=1e-2, features=None, seed=0, batch_size=256, ema=True):
    """Perceptual path length (StyleGAN): how much the image changes per small step along a latent path.

    For ``n`` pairs of latents and a position t ~ U(0, 1) on the path between them, the
    images at t and t + epsilon are compared: ``||phi(G(t + eps)) - phi(G(t))||^2 / eps^2``
    with ``phi`` = ``features`` (a function of images in [-1, 1]; default the pixels).
    ``space="z"``: spherical interpolation of z (z is Gaussian); ``"w"``: linear
    interpolation of w = f(z). The noise is fixed along each path. A smaller value means a
    smoother, less entangled space.

    Returns the n values (NumPy); StyleGAN reports their mean after dropping the 1 % tails.
    """
    n = _util.positive_int("n", n)
    space = _util.choice("space", space, ("w", "z"))
    epsilon = _util.number("epsilon", epsilon, 0.0, 1.0, low_open=True)
    mapping, synthesis = model.nets(ema)
    features = features or (lambda images: images.reshape(len(images), -1))
    rng = np.random.default_rng(seed)
    gen = keras.random.SeedGenerator(seed)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        z0, z1 = rng.standard_normal((2, m, model.z_dim)).astype("float32")
        t = rng.uniform(0.0, 1.0 - epsilon, (m, 1)).astype("float32")
        noise = synthesis.draw_noise(m, gen)
        if space == "z":
            wa, wb = mapping(slerp(z0, z1, t)), mapping(slerp(z0, z1, t + epsilon))
        else:
            w0, w1 = ops.convert_to_numpy(mapping(z0)), ops.convert_to_numpy(mapping(z1))
            wa, wb = w0 + t * (w1 - w0), w0 + (t + epsilon) * (w1 - w0)
        ia = np.clip(ops.convert_to_numpy(synthesis(wa, noise)), -1.0, 1.0)
        ib = np.clip(ops.convert_to_numpy(synthesis(wb, noise)), -1.0, 1.0)
        out.append(np.sum((np.asarray(features(ib)) - np.asarray(features(ia))) ** 2, axis=1) / epsilon**2)
    return np.concatenate(out)


def slerp(a, b, t):
    """Spherical interpolation between rows of ``a`` and ``b`` (batch, d) at ``t`` (batch, 1), NumPy."""
    a_n = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b_n = b / np.linalg.norm(b, axis=-1, keepdims=True)
    omega = np.arccos(np.clip(np.sum(a_n * b_n, axis=-1, keepdims=True), -1.0, 1.0))
    so = np.maximum(np.sin(omega), 1e-8)
    return (np.sin((1.0 - t) * omega) / so * a + np.sin(t * omega) / so * b).astype("float32")
