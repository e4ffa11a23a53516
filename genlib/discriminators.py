"""What keeps a GAN's discriminator in check: minibatch standard deviation, spectral normalisation,
self-attention, the R1 penalty, and a discriminator built from them.

Chapter 9 (chapters/09_advanced_gans.ipynb). ``build_discriminator`` uses the equalised
convolutions of ``genlib.style_layers`` (or ``SpectralConv2D``, SN-GAN's), ``MinibatchStdDev``
(ProGAN) and optionally SAGAN's ``SelfAttention``; ``r1_penalty`` is the gradient penalty on real
images that ``stylegan.StyleGAN`` applies lazily.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from genlib import _util
from genlib.style_layers import EqualizedConv2D, _activation, _kernel_size

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
