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
* ``adain`` / ``AdaIN``: StyleGAN 1's adaptive instance normalisation, the block that
  demodulation replaced.

The stabilisers: ``EqualizedDense`` / ``EqualizedConv2D`` (**equalised learning rate**),
``MinibatchStdDev``, ``r1_penalty`` (applied lazily), an **EMA generator**; SAGAN's
``SelfAttention`` and ``SpectralConv2D`` (**spectral normalisation**, ``power_iteration``)
as blocks ``build_discriminator`` can use.

``StyleGAN`` trains it all with ``fit`` (a ``_util.TrainStepModel`` with two optimizers) and
samples with ``generate(n, seed=..., truncation_psi=...)``. ``path_length`` measures how
smoothly images change along a path in Z or W. (``training.WallClockBudget`` stops ``fit`` after a
fixed time, so the chapter compares two models at the same budget.)
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from genlib import _util, gan

LRELU_GAIN = math.sqrt(2.0)  # keeps unit variance through a leaky ReLU(0.2) (He et al.), as StyleGAN2 does


def lrelu(x):
    """Leaky ReLU (slope 0.2) times sqrt(2), so unit-variance inputs stay about unit variance."""
    # max(x, 0.2 x) rather than ops.leaky_relu: TensorFlow's graph optimiser fails (and logs an
    # error) fusing a LeakyRelu after a convolution and a bias when its gradient is also taken.
    return ops.maximum(x, 0.2 * x) * LRELU_GAIN


def _activation(name):
    return {"lrelu": lrelu, None: None, "linear": None}[_util.choice("activation", name, ("lrelu", "linear", None))]


# ---------------------------------------------------------------------------
# Equalised learning rate


@keras.saving.register_keras_serializable(package="genlib")
class EqualizedDense(layers.Layer):
    """A dense layer with an **equalised learning rate** (ProGAN, Karras et al. 2018).

    The kernel is stored as N(0, 1 / lr_multiplier^2) draws and multiplied at run time by
    ``lr_multiplier / sqrt(fan_in)``: the forward pass is He-initialised, and since Adam's
    steps have about the same size for every parameter, every layer learns at the same
    relative speed (``lr_multiplier`` < 1 slows a layer down: the mapping network uses 0.01).

    Args:
        units: output features.
        lr_multiplier: relative learning rate of this layer.
        bias_init: initial value of the bias as seen in the forward pass.
        activation: ``"lrelu"`` or None.

    Shapes: (batch, ..., fan_in) -> (batch, ..., units).
    """

    def __init__(self, units, lr_multiplier=1.0, bias_init=0.0, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = _util.positive_int("units", units)
        self.lr_multiplier = _util.number("lr_multiplier", lr_multiplier, 0.0, low_open=True)
        self.bias_init = _util.number("bias_init", bias_init)
        self.activation = activation
        self._act = _activation(activation)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.gain = self.lr_multiplier / math.sqrt(fan_in)
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units),
                                      initializer=keras.initializers.RandomNormal(0.0, 1.0 / self.lr_multiplier))
        self.bias = self.add_weight(name="bias", shape=(self.units,),
                                    initializer=keras.initializers.Constant(self.bias_init / self.lr_multiplier))

    def call(self, x):
        y = ops.matmul(x, self.kernel * self.gain) + self.bias * self.lr_multiplier
        return y if self._act is None else self._act(y)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lr_multiplier": self.lr_multiplier,
                "bias_init": self.bias_init, "activation": self.activation}


@keras.saving.register_keras_serializable(package="genlib")
class EqualizedConv2D(layers.Layer):
    """A 'same'-padded convolution with an equalised learning rate (see ``EqualizedDense``).

    Args:
        filters: output channels.
        kernel_size: odd int k (a k x k window).
        activation: ``"lrelu"`` or None.
        use_bias: add a learned bias.
        padding: ``"same"`` or ``"valid"``.

    Shapes: (batch, H, W, C) -> (batch, H', W', filters).
    """

    def __init__(self, filters, kernel_size=3, activation=None, use_bias=True, padding="same", **kwargs):
        super().__init__(**kwargs)
        self.filters = _util.positive_int("filters", filters)
        self.padding = _util.choice("padding", padding, ("same", "valid"))
        self.kernel_size = _kernel_size(kernel_size, self.padding)
        self.activation, self.use_bias = activation, bool(use_bias)
        self._act = _activation(activation)

    def build(self, input_shape):
        k, c = self.kernel_size, int(input_shape[-1])
        self.gain = 1.0 / math.sqrt(k * k * c)
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters),
                                      initializer=keras.initializers.RandomNormal(0.0, 1.0))
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None

    def call(self, x):
        y = ops.conv(x, self.kernel * self.gain, padding=self.padding)
        if self.bias is not None:
            y = y + self.bias
        return y if self._act is None else self._act(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "activation": self.activation, "use_bias": self.use_bias, "padding": self.padding}


def _kernel_size(value, padding):
    # A 'same' window needs a centre pixel; a 'valid' one (the 4x4 head) may be even.
    return _odd("kernel_size", value) if padding == "same" else _util.positive_int("kernel_size", value)


def _odd(name, value):
    value = _util.positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (the window needs a centre), got {value}.")
    return value


# ---------------------------------------------------------------------------
# Styles: AdaIN (StyleGAN 1) and the modulated, demodulated convolution (StyleGAN 2)


def adain(x, scale, bias, epsilon=1e-8):
    """Adaptive instance normalisation: ``scale * (x - mean(x)) / std(x) + bias`` per image and channel.

    Mean and standard deviation are taken over each feature map's pixels, so the output's
    per-channel statistics are the style's: mean ``bias``, standard deviation ``scale``.

    Shapes: x (batch, H, W, C); scale, bias (batch, C). Returns (batch, H, W, C).
    """
    x, scale, bias = (ops.convert_to_tensor(a, "float32") for a in (x, scale, bias))
    mean = ops.mean(x, axis=(1, 2), keepdims=True)
    std = ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + epsilon)
    return scale[:, None, None, :] * (x - mean) / std + bias[:, None, None, :]


@keras.saving.register_keras_serializable(package="genlib")
class AdaIN(layers.Layer):
    """StyleGAN 1's style block: a learned affine map of w gives each channel's scale and bias for ``adain``.

    Call ``layer(x, w)``. Shapes: x (batch, H, W, C), w (batch, w_dim) -> (batch, H, W, C).
    """

    def build(self, x_shape, w_shape):
        channels = int(x_shape[-1])
        self.to_scale = EqualizedDense(channels, bias_init=1.0, name="to_scale")  # starts as the identity style
        self.to_bias = EqualizedDense(channels, name="to_bias")
        self.to_scale.build(w_shape)
        self.to_bias.build(w_shape)

    def call(self, x, w):
        return adain(x, self.to_scale(w), self.to_bias(w))


@keras.saving.register_keras_serializable(package="genlib")
class ModulatedConv2D(layers.Layer):
    """StyleGAN2's convolution whose weights are scaled per image by a style, then **demodulated**.

    With style ``s = A(w)`` (a learned affine map, one number per input channel), the
    kernel of image b is ``w'_ijk = s_i w_ijk`` (i input channel, j output channel, k tap),
    and demodulation divides it by ``sigma_j = sqrt(sum_ik w'_ijk^2 + eps)``: for inputs of
    unit variance, each output channel has unit variance again. It is computed as the
    equivalent ``conv(x * s, w) / sigma`` so the whole batch shares one convolution.

    Args:
        filters: output channels.
        kernel_size: odd int.
        demodulate: divide by sigma (False: modulation only, as for ``ToRGB``).
        upsample: double height and width (bilinear) before the convolution.

    Call ``layer(x, w)``. Shapes: x (batch, H, W, C), w (batch, w_dim) -> (batch, H', W', filters).
    """

    def __init__(self, filters, kernel_size=3, demodulate=True, upsample=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = _util.positive_int("filters", filters)
        self.kernel_size = _odd("kernel_size", kernel_size)
        self.demodulate, self.upsample = bool(demodulate), bool(upsample)

    def build(self, x_shape, w_shape):
        k, c = self.kernel_size, int(x_shape[-1])
        self.affine = EqualizedDense(c, bias_init=1.0, name="affine")  # s starts at 1: plain convolution
        self.affine.build(w_shape)
        self.gain = 1.0 / math.sqrt(k * k * c)  # equalised learning rate
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters),
                                      initializer=keras.initializers.RandomNormal(0.0, 1.0))

    def styles(self, w):
        """``s = A(w)``: the per-input-channel scales, (batch, C)."""
        return self.affine(w)

    def demodulation(self, s):
        """``1 / sigma_j`` per image and output channel, (batch, filters), for styles ``s`` (batch, C)."""
        weight = self.kernel * self.gain
        # sum_ik (s_i w_ijk)^2 = sum_i s_i^2 (sum_k w_ijk^2): one small matrix product.
        return ops.rsqrt(ops.matmul(ops.square(s), ops.sum(ops.square(weight), axis=(0, 1))) + 1e-8)

    def call(self, x, w):
        s = self.styles(w)
        if self.upsample:
            x = upsample2x(x)
        y = ops.conv(x * s[:, None, None, :], self.kernel * self.gain, padding="same")
        if self.demodulate:
            y = y * self.demodulation(s)[:, None, None, :]
        return y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "demodulate": self.demodulate, "upsample": self.upsample}


def upsample2x(x):
    """Bilinear doubling of height and width: (batch, H, W, C) -> (batch, 2H, 2W, C)."""
    h, w = x.shape[1], x.shape[2]
    return ops.image.resize(x, (2 * h, 2 * w), interpolation="bilinear")


@keras.saving.register_keras_serializable(package="genlib")
class SynthesisLayer(layers.Layer):
    """One layer of the synthesis network: modulated convolution, noise, bias, activation.

    ``y = lrelu(conv_w(x) + strength * noise + bias)``: the **noise input** is one
    N(0, 1) value per pixel, shared by all channels, scaled by a learned ``strength``
    (zero at the start) — the stochastic details (hair, texture) that no style should
    have to encode.

    Call ``layer(x, w, noise)``. Shapes: x (batch, H, W, C), w (batch, w_dim),
    noise (batch, H', W', 1) -> (batch, H', W', filters), H' = 2H with ``upsample``.
    """

    def __init__(self, filters, upsample=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = _util.positive_int("filters", filters)
        self.upsample = bool(upsample)

    def build(self, x_shape, w_shape, noise_shape):
        self.conv = ModulatedConv2D(self.filters, 3, upsample=self.upsample, name="conv")
        self.conv.build(x_shape, w_shape)
        self.noise_strength = self.add_weight(name="noise_strength", shape=(), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x, w, noise):
        return lrelu(self.conv(x, w) + self.noise_strength * noise + self.bias)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "upsample": self.upsample}


@keras.saving.register_keras_serializable(package="genlib")
class ToRGB(layers.Layer):
    """A 1x1 modulated convolution (no demodulation) to image channels, plus a bias: one skip output.

    Call ``layer(x, w)``. Shapes: x (batch, H, W, C), w (batch, w_dim) -> (batch, H, W, channels).
    """

    def __init__(self, channels=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = _util.positive_int("channels", channels)

    def build(self, x_shape, w_shape):
        self.conv = ModulatedConv2D(self.channels, 1, demodulate=False, name="conv")
        self.conv.build(x_shape, w_shape)
        self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")

    def call(self, x, w):
        return self.conv(x, w) + self.bias

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


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
# Discriminator blocks: minibatch standard deviation, spectral normalisation, self-attention


@keras.saving.register_keras_serializable(package="genlib")
class MinibatchStdDev(layers.Layer):
    """Appends one channel: the average standard deviation of the features over a group of images.

    Images are split into groups of ``group_size`` (image i joins group ``i % (batch / G)``);
    within a group the standard deviation of every feature is taken over the images, then
    averaged over features and pixels. A generator that makes the same image again and
    again gives a low value, which the discriminator can see (ProGAN's answer to mode
    collapse). With a batch size that is not a multiple of ``group_size``, the largest group
    size below it that divides the batch is used (TensorFlow, whose traced batch size is
    unknown, needs a multiple).

    Shapes: (batch, H, W, C) -> (batch, H, W, C + 1).
    """

    def __init__(self, group_size=4, **kwargs):
        super().__init__(**kwargs)
        self.group_size = _util.positive_int("group_size", group_size)

    def call(self, x):
        n = ops.shape(x)[0]
        g = self.group_size
        if isinstance(n, int):  # a known batch size: the largest group size <= G that divides it
            g = max(d for d in range(1, min(g, n) + 1) if n % d == 0)
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        y = ops.reshape(x, (g, -1, h, w, c))
        y = y - ops.mean(y, axis=0, keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(y), axis=0) + 1e-8)  # (batch / G, H, W, C)
        s = ops.mean(std, axis=(1, 2, 3))  # one number per group
        s = ops.tile(s, (g,))  # back to one per image, in the reshape's order
        return ops.concatenate([x, ops.broadcast_to(s[:, None, None, None], (n, h, w, 1))], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


def power_iteration(matrix, u, iterations=1, epsilon=1e-12):
    """Estimate the largest singular value of ``matrix`` (m, n) by power iteration from ``u`` (n,).

    Each iteration ``v = normalise(W u)``, ``u = normalise(W^T v)``; then ``sigma = v^T W u``.
    Returns ``(sigma, u)``: keep ``u`` for the next call (one iteration per training step is
    enough once it has converged, as in Miyato et al. 2018).
    """
    iterations = _util.positive_int("iterations", iterations)
    v = None
    for _ in range(iterations):
        v = ops.matmul(matrix, u)
        v = v / (ops.norm(v) + epsilon)
        u = ops.matmul(ops.transpose(matrix), v)
        u = u / (ops.norm(u) + epsilon)
    return ops.sum(v * ops.matmul(matrix, u)), u


@keras.saving.register_keras_serializable(package="genlib")
class SpectralConv2D(layers.Layer):
    """A 'same' convolution whose kernel is divided by its **spectral norm** (SN-GAN, Miyato et al. 2018).

    The kernel reshaped to a (k*k*C, filters) matrix has largest singular value sigma;
    dividing by it makes the layer (about) 1-Lipschitz. sigma is estimated by one step of
    ``power_iteration`` per training call from a persistent vector ``u``.

    Args: as ``EqualizedConv2D``, plus ``power_iterations`` per call.

    Shapes: (batch, H, W, C) -> (batch, H', W', filters).
    """

    def __init__(self, filters, kernel_size=3, activation=None, use_bias=True, padding="same", power_iterations=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = _util.positive_int("filters", filters)
        self.padding = _util.choice("padding", padding, ("same", "valid"))
        self.kernel_size = _kernel_size(kernel_size, self.padding)
        self.activation, self.use_bias = activation, bool(use_bias)
        self.power_iterations = _util.positive_int("power_iterations", power_iterations)
        self._act = _activation(activation)

    def build(self, input_shape):
        k, c = self.kernel_size, int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.u = self.add_weight(name="u", shape=(self.filters,), trainable=False,
                                 initializer=keras.initializers.RandomNormal(0.0, 1.0))

    def normalized_kernel(self, training=False):
        matrix = ops.reshape(self.kernel, (-1, self.filters))
        sigma, u = power_iteration(ops.stop_gradient(matrix), self.u, self.power_iterations)
        if training:
            self.u.assign(u)
        return self.kernel / sigma

    def call(self, x, training=False):
        y = ops.conv(x, self.normalized_kernel(training), padding=self.padding)
        if self.bias is not None:
            y = y + self.bias
        return y if self._act is None else self._act(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "activation": self.activation, "use_bias": self.use_bias, "padding": self.padding,
                "power_iterations": self.power_iterations}


def _conv(spectral, filters, kernel_size=3, **kwargs):
    layer = SpectralConv2D if spectral else EqualizedConv2D
    return layer(filters, kernel_size, **kwargs)


@keras.saving.register_keras_serializable(package="genlib")
class SelfAttention(layers.Layer):
    """SAGAN's self-attention (Zhang et al. 2019): every position looks at every other.

    With 1x1 convolutions f, g (to C/8 channels) and h (to C/2), position i's output is
    ``o_i = v(sum_j softmax_j(f(x)_i . g(x)_j) h(x)_j)`` and the layer returns
    ``x + gamma * o`` with a learned ``gamma`` starting at 0 (the network first learns
    locally, then lets attention in).

    Args:
        key_ratio: C / (channels of f and g).
        spectral_norm: spectrally normalise the four 1x1 convolutions.

    Shapes: (batch, H, W, C) -> (batch, H, W, C); the attention matrix is (batch, HW, HW).
    """

    def __init__(self, key_ratio=8, spectral_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.key_ratio = _util.positive_int("key_ratio", key_ratio)
        self.spectral_norm = bool(spectral_norm)

    def build(self, input_shape):
        c = int(input_shape[-1])
        keys, values = max(1, c // self.key_ratio), max(1, c // 2)
        self.f = _conv(self.spectral_norm, keys, 1, use_bias=False, name="f")
        self.g = _conv(self.spectral_norm, keys, 1, use_bias=False, name="g")
        self.h = _conv(self.spectral_norm, values, 1, use_bias=False, name="h")
        self.v = _conv(self.spectral_norm, c, 1, use_bias=False, name="v")
        for layer in (self.f, self.g, self.h):
            layer.build(input_shape)
        self.v.build(tuple(input_shape[:-1]) + (values,))
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")

    def attention(self, x):
        """The attention weights (batch, HW, HW): row i is where position i looks."""
        b, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
        f = ops.reshape(self.f(x), (b, h * w, -1))
        g = ops.reshape(self.g(x), (b, h * w, -1))
        return ops.softmax(ops.matmul(f, ops.transpose(g, (0, 2, 1))), axis=-1)

    def call(self, x):
        b, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
        values = ops.reshape(self.h(x), (b, h * w, -1))
        o = ops.reshape(ops.matmul(self.attention(x), values), (b, h, w, -1))
        return x + self.gamma * self.v(o)

    def get_config(self):
        return {**super().get_config(), "key_ratio": self.key_ratio, "spectral_norm": self.spectral_norm}


def build_discriminator(image_shape=(16, 16, 1), channels=(32, 64, 64), mbstd_group=4, attention_resolution=None,
                        spectral_norm=False, name="discriminator") -> keras.Model:
    """StyleGAN2's residual discriminator, small: from RGB, one residual block per halving, then a 4x4 head.

    Each block: conv 3x3, conv 3x3, 2x2 average pool, added to a 1x1 projection of the
    pooled input and scaled by 1/sqrt(2). The head: ``MinibatchStdDev``, conv 3x3, a 4x4
    valid conv (a dense layer over the map), a 1x1 conv to one logit.

    Args:
        image_shape: (S, S, C), S a power of two >= 8.
        channels: feature channels at each resolution, from S down to 4 (``log2(S) - 1`` numbers).
        mbstd_group: group size of the minibatch standard deviation (0: no such layer).
        attention_resolution: add a ``SelfAttention`` block at this resolution (None: none).
        spectral_norm: ``SpectralConv2D`` everywhere instead of ``EqualizedConv2D`` (SAGAN's choice).

    Input (batch, S, S, C) images in [-1, 1]; output (batch, 1) logits.
    """
    size, _, image_channels = _util.shape("image_shape", image_shape, 3)
    if image_shape[0] != image_shape[1] or size < 8 or size & (size - 1):
        raise ValueError(f"image_shape must be (S, S, C) with S a power of two >= 8, got {tuple(image_shape)}.")
    resolutions = [size // 2**i for i in range(int(math.log2(size)) - 1)]  # S, S/2, ..., 4
    channels = tuple(channels)
    if len(channels) != len(resolutions):
        raise ValueError(f"channels must give one number per resolution {resolutions}, got {channels}.")
    mbstd_group = _util.positive_int("mbstd_group", mbstd_group, 0)
    if attention_resolution is not None and attention_resolution not in resolutions[:-1]:
        raise ValueError(f"attention_resolution must be one of {resolutions[:-1]} or None, "
                         f"got {attention_resolution!r}.")
    conv = lambda *a, **k: _conv(spectral_norm, *a, **k)  # noqa: E731
    x = keras.Input((size, size, image_channels), name="images")
    h = conv(channels[0], 1, activation="lrelu", name="from_rgb")(x)
    for i, r in enumerate(resolutions[:-1]):
        if r == attention_resolution:
            h = SelfAttention(spectral_norm=spectral_norm, name=f"attention_{r}")(h)
        out = channels[i + 1]
        skip = conv(out, 1, use_bias=False, name=f"skip_{r}")(layers.AveragePooling2D(2)(h))
        h = conv(channels[i], 3, activation="lrelu", name=f"conv_{r}_a")(h)
        h = conv(out, 3, activation="lrelu", name=f"conv_{r}_b")(h)
        h = layers.AveragePooling2D(2)(h)
        h = layers.Rescaling(1.0 / math.sqrt(2.0))(layers.Add()([h, skip]))  # keeps the variance of the sum at 1
    if mbstd_group:
        h = MinibatchStdDev(mbstd_group, name="mbstd")(h)
    h = conv(channels[-1], 3, activation="lrelu", name="head_conv")(h)
    h = conv(channels[-1], 4, activation="lrelu", padding="valid", name="head_dense")(h)  # 4x4 -> 1x1: a dense layer
    h = conv(1, 1, name="logit")(h)
    return keras.Model(x, layers.Flatten()(h), name=name)


# ---------------------------------------------------------------------------
# R1


def r1_penalty(discriminator, real):
    """R1 (Mescheder et al. 2018): ``mean_x ||grad_x D(x)||^2`` over real images ``x`` (batch, ...).

    Pushes D's gradient to zero on the data, so the generator is not pulled past it: the
    game then converges locally. D is called with ``training=False`` (no state moves while
    the gradient is taken). Differentiable w.r.t. D's weights.
    """
    grads = _util.input_gradient(lambda x: discriminator(x, training=False), real)
    return ops.mean(ops.sum(ops.reshape(ops.square(grads), (ops.shape(grads)[0], -1)), axis=1))


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
