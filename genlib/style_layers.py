"""The layers of a style-based generator: equalised learning rate, AdaIN, the modulated convolution.

Chapter 9 (chapters/09_advanced_gans.ipynb); ``genlib.stylegan`` builds the generator from them
and ``genlib.discriminators`` the discriminator.

* ``EqualizedDense`` / ``EqualizedConv2D``: the **equalised learning rate** (ProGAN): weights drawn
  N(0, 1) and scaled by He's constant at run time, so every weight learns at the same speed.
* ``adain`` / ``AdaIN``: StyleGAN 1's adaptive instance normalisation.
* ``ModulatedConv2D``: StyleGAN2's convolution whose weights a style scales per image, then
  **demodulates**; ``SynthesisLayer`` (modulated convolution, noise input, bias, activation) and
  ``ToRGB``, the blocks of ``stylegan.SynthesisNetwork``.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from genlib import _util

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
