"""Normalizing flows: RealNVP and its pieces. Chapter 5 (chapters/05_realnvp.ipynb).

A flow is an invertible map ``f`` from data ``x`` to a latent ``z = f(x)`` with a simple
density (a standard normal). By the change of variables,
``log p(x) = log N(f(x); 0, I) + log |det df/dx|``, so every piece below returns its
output *and* the log-determinant of its Jacobian, per example.

Every flow layer has ``transform(x) -> (y, log_det)`` (data towards latent) and
``inverse(y) -> (x, log_det)`` where the second ``log_det`` is that of the inverse map
(minus the forward one at the matching point). ``call`` is ``transform``. (Not named
``forward``: under PyTorch, ``torch.nn.Module.__call__`` runs a layer's ``forward``.)

* ``checkerboard_mask``, ``channel_mask``: which entries a coupling layer keeps.
* ``AffineCoupling``: kept entries pass unchanged and parametrise an elementwise affine map
  of the others, ``y = x * exp(s) + t``; its Jacobian is triangular, ``log_det = sum(s)``.
* ``squeeze`` / ``unsqueeze`` and the ``Squeeze`` layer: (H, W, C) <-> (H/2, W/2, 4C).
* ``UniformDequantize``: integer pixels to continuous values in their bins.
* ``LogitTransform``: [0, 1] to the real line, with its log-determinant.
* ``ElementwiseAffine``: a learned per-entry scale and shift, initialised from data.
* ``RealNVP``: the model, for vectors (a 2-D toy) or for images (multi-scale, with
  dequantisation and the logit transform), trained by maximum likelihood and reporting
  bits per dimension; ``generate(n)`` samples it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib.distributions import bits_per_dim, normal_log_density

MASK_TYPES = ("checkerboard", "channel")


def _event_shape(shape, what: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"{what} needs examples of shape (D,) or (H, W, C), got {shape}.")
    return _util.shape(f"{what} shape", shape)


def checkerboard_mask(shape, parity: int = 0) -> np.ndarray:
    """Alternating kept/transformed entries, float32; 1 marks an entry that is kept.

    Args:
        shape: one example's shape, (D,) or (H, W, C).
        parity: 0 keeps entries whose index sum is even, 1 the others.

    Returns (D,) for vectors (even indices kept for parity 0), (H, W, 1) for images
    (the same pattern in every channel).
    """
    shape = _event_shape(shape, "checkerboard_mask")
    _util.choice("parity", parity, (0, 1))
    if len(shape) == 1:
        return ((np.arange(shape[0]) + parity) % 2 == 0).astype("float32")
    rows, cols = np.indices(shape[:2])
    return ((rows + cols + parity) % 2 == 0).astype("float32")[..., None]


def channel_mask(shape, parity: int = 0) -> np.ndarray:
    """Half of the channels kept, float32; 1 marks a kept entry.

    Args:
        shape: one example's shape, (D,) or (H, W, C) with C even.
        parity: 0 keeps the first half, 1 the second.

    Returns (D,) for vectors (the first D // 2 entries are the "first half"), (1, 1, C) for images.
    """
    shape = _event_shape(shape, "channel_mask")
    _util.choice("parity", parity, (0, 1))
    channels = shape[-1]
    if len(shape) == 3 and channels % 2:
        raise ValueError(f"a channel mask needs an even number of channels, got shape {shape}; squeeze first.")
    first = (np.arange(channels) < channels // 2).astype("float32")
    mask = first if parity == 0 else 1.0 - first
    return mask if len(shape) == 1 else mask.reshape(1, 1, channels)


def make_mask(shape, mask_type: str, parity: int) -> np.ndarray:
    """``checkerboard_mask`` or ``channel_mask`` by name."""
    _util.choice("mask_type", mask_type, MASK_TYPES)
    return (checkerboard_mask if mask_type == "checkerboard" else channel_mask)(shape, parity)


def _per_scale(name, value, num_scales):
    """``value`` for every scale: a positive int (the same at each) or a sequence of ``num_scales`` of them.

    Returns ``(stored, per_scale)``: ``stored`` is the int when every scale has the same value (as the
    argument was most likely given), else a tuple; ``per_scale`` always a tuple of ``num_scales`` ints.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = [value] * num_scales
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise ValueError(f"{name} must be a positive int or a list of {num_scales} (one per scale), got {value!r}.")
    if len(values) != num_scales:
        raise ValueError(f"{name} needs one value per scale ({num_scales}), got {len(values)}: {value!r}.")
    per_scale = tuple(_util.positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))
    return (per_scale[0] if len(set(per_scale)) == 1 else per_scale), per_scale


def _sum_event(t):
    """Sum over every axis but the batch: per-example totals, shape (batch,)."""
    return ops.sum(ops.reshape(t, (ops.shape(t)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="genlib")
class AffineCoupling(keras.layers.Layer):
    """Affine coupling layer: ``y = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x))``.

    The kept entries (mask ``m = 1``) pass through and feed a network that outputs a log-scale
    ``s`` and a shift ``t`` for the other entries. ``s = scale * tanh(raw)`` with a learned
    per-channel ``scale``: bounded, so one step cannot blow an activation up by more than
    ``exp(scale)``. The network's last layer starts at zero, so a new coupling is the identity.

    Args:
        mask_type: ``"checkerboard"`` or ``"channel"`` (see the mask functions).
        parity: 0 or 1, which half is kept; alternate it so every entry gets transformed.
        hidden: units of each hidden Dense layer (vectors) or filters of each 3×3 conv (images).
        num_hidden: hidden layers of the s/t network.

    Shapes: (batch, D) or (batch, H, W, C) -> the same shape, and log_det (batch,).
    """

    def __init__(self, mask_type: str = "checkerboard", parity: int = 0, hidden: int = 64, num_hidden: int = 2,
                 **kwargs):
        super().__init__(**kwargs)
        self.mask_type = _util.choice("mask_type", mask_type, MASK_TYPES)
        self.parity = int(_util.choice("parity", parity, (0, 1)))
        self.hidden = _util.positive_int("hidden", hidden)
        self.num_hidden = _util.positive_int("num_hidden", num_hidden)

    def build(self, input_shape):
        event = _event_shape(input_shape[1:], "AffineCoupling")
        # A NumPy constant, not a tensor made in build(): it is safe inside any graph (see autoregressive.py).
        self.mask = make_mask(event, self.mask_type, self.parity)
        self.is_image = len(event) == 3
        channels = event[-1]
        zeros = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
        if self.is_image:
            self.net = [keras.layers.Conv2D(self.hidden, 3, padding="same", activation="relu", name=f"conv_{i}")
                        for i in range(self.num_hidden)]
            self.net.append(keras.layers.Conv2D(2 * channels, 3, padding="same", name="st", **zeros))
            # The checkerboard pattern is fed as an extra channel: with zero padding alone a
            # convolution could not tell a kept pixel from a transformed one.
            shape = (None, *event[:2], channels + (self.mask_type == "checkerboard"))
        else:
            self.net = [keras.layers.Dense(self.hidden, activation="relu", name=f"dense_{i}")
                        for i in range(self.num_hidden)]
            self.net.append(keras.layers.Dense(2 * channels, name="st", **zeros))
            shape = (None, channels)
        for layer in self.net:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones")

    def scale_and_shift(self, x_kept):
        """``(s, t)`` for the transformed entries (zero on the kept ones), from the kept input."""
        mask = ops.convert_to_tensor(self.mask)  # torch multiplies tensors by tensors, not by NumPy arrays
        h = x_kept
        if self.is_image and self.mask_type == "checkerboard":
            h = ops.concatenate([h, ops.zeros_like(h[..., :1]) + mask], axis=-1)
        for layer in self.net:
            h = layer(h)
        raw_s, t = ops.split(h, 2, axis=-1)
        free = 1.0 - mask  # s = t = 0 on kept entries: they pass unchanged and add nothing to log_det
        return self.scale * ops.tanh(raw_s) * free, t * free

    def transform(self, x):
        x, mask = ops.convert_to_tensor(x), ops.convert_to_tensor(self.mask)
        s, t = self.scale_and_shift(x * mask)
        return x * ops.exp(s) + t, _sum_event(s)

    def inverse(self, y):
        y, mask = ops.convert_to_tensor(y), ops.convert_to_tensor(self.mask)
        # The kept entries of y equal those of x, so the same s and t can be recomputed.
        s, t = self.scale_and_shift(y * mask)
        return (y - t) * ops.exp(-s), -_sum_event(s)

    def call(self, x):
        return self.transform(x)

    def get_config(self):
        return {**super().get_config(), "mask_type": self.mask_type, "parity": self.parity,
                "hidden": self.hidden, "num_hidden": self.num_hidden}


def _check_squeezable(shape):
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[1] % 2 or shape[2] % 2:
        raise ValueError(f"squeeze needs (batch, H, W, C) with even H and W, got shape {tuple(shape)}.")


def squeeze(x):
    """Space to channels: (batch, H, W, C) -> (batch, H/2, W/2, 4C); each 2×2 block becomes 4 channels."""
    _check_squeezable(tuple(x.shape))
    _, h, w, c = x.shape
    x = ops.reshape(x, (-1, h // 2, 2, w // 2, 2, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, h // 2, w // 2, 4 * c))


def unsqueeze(x):
    """Channels to space, the inverse of ``squeeze``: (batch, H, W, 4C) -> (batch, 2H, 2W, C)."""
    if len(x.shape) != 4 or x.shape[-1] is None or x.shape[-1] % 4:
        raise ValueError(f"unsqueeze needs (batch, H, W, C) with C divisible by 4, got shape {tuple(x.shape)}.")
    _, h, w, c4 = x.shape
    x = ops.reshape(x, (-1, h, w, 2, 2, c4 // 4))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, 2 * h, 2 * w, c4 // 4))


@keras.saving.register_keras_serializable(package="genlib")
class Squeeze(keras.layers.Layer):
    """``squeeze`` as a flow layer: a permutation of the entries, so ``log_det = 0``.

    Shapes: (batch, H, W, C) with H, W even -> (batch, H/2, W/2, 4C), and log_det (batch,).
    """

    def build(self, input_shape):
        _check_squeezable(tuple(input_shape))

    def transform(self, x):
        return squeeze(x), ops.zeros((ops.shape(x)[0],))

    def inverse(self, y):
        return unsqueeze(y), ops.zeros((ops.shape(y)[0],))

    def call(self, x):
        return self.transform(x)

    def compute_output_shape(self, input_shape):
        _check_squeezable(tuple(input_shape))
        b, h, w, c = input_shape
        return (b, h // 2, w // 2, 4 * c)


@keras.saving.register_keras_serializable(package="genlib")
class UniformDequantize(keras.layers.Layer):
    """Integer pixels ``q`` in 0..levels-1 to ``y = (q + (1 - margin) u) / levels``, ``u ~ U[0, 1)``.

    Every ``y`` stays inside its bin ``[q / levels, (q + 1) / levels)``: the small ``margin``
    keeps float32 rounding from pushing ``q + u`` up to ``q + 1``. The map ``u -> y`` has
    Jacobian ``((1 - margin) / levels)`` per dimension: ``log_det_per_dim`` is its log, used by
    the likelihood bound (see ``RealNVP.discrete_nll``).

    Args:
        levels: intensity levels of the integer data.
        margin: fraction of each bin left out at its top.
        seed: int seed of the noise.

    Shapes: (batch, ...) integers (any dtype) -> (batch, ...) float32 in [0, 1).
    """

    def __init__(self, levels: int = 256, margin: float = 1e-3, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.levels = _util.positive_int("levels", levels, 2)
        self.margin, self.seed = _util.fraction("margin", margin), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def log_det_per_dim(self) -> float:
        return math.log((1.0 - self.margin) / self.levels)

    def call(self, q):
        q = ops.cast(q, "float32")
        u = keras.random.uniform(ops.shape(q), seed=self.seed_generator)
        return (q + (1.0 - self.margin) * u) / self.levels

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "margin": self.margin, "seed": self.seed}


@keras.saving.register_keras_serializable(package="genlib")
class LogitTransform(keras.layers.Layer):
    """``[0, 1]`` to the real line: ``z = logit(alpha + (1 - 2 alpha) y)``.

    Squeezing into ``[alpha, 1 - alpha]`` first keeps ``z`` finite at ``y = 0`` and ``y = 1``.
    Per dimension, ``dz/dy = (1 - 2 alpha) / (s (1 - s))`` with ``s = alpha + (1 - 2 alpha) y``.

    Args:
        alpha: the margin, in [0, 0.5).

    Shapes: (batch, ...) -> (batch, ...), and log_det (batch,).
    """

    def __init__(self, alpha: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _util.fraction("alpha", alpha, high=0.5)

    def _log_det(self, s):
        return _sum_event(math.log(1.0 - 2.0 * self.alpha) - ops.log(s) - ops.log(1.0 - s))

    def transform(self, y):
        s = self.alpha + (1.0 - 2.0 * self.alpha) * y
        return ops.log(s) - ops.log(1.0 - s), self._log_det(s)

    def inverse(self, z):
        s = ops.sigmoid(z)
        return (s - self.alpha) / (1.0 - 2.0 * self.alpha), -self._log_det(s)

    def call(self, y):
        return self.transform(y)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="genlib")
class ElementwiseAffine(keras.layers.Layer):
    """A learned scale and shift for every entry: ``y = (x + shift) * exp(log_scale)``.

    Its Jacobian is diagonal, ``log_det = sum(log_scale)`` for every example. Starts as the identity;
    ``initialize(x)`` sets it from data (as Glow's actnorm) so that each entry of ``y`` has zero mean
    and unit variance over the batch: from the first step the flow is a per-pixel Gaussian in
    logit space, and the couplings only have to learn what that misses.

    Shapes: (batch, ...) -> (batch, ...), and log_det (batch,).
    """

    def build(self, input_shape):
        event = tuple(input_shape[1:])
        self.log_scale = self.add_weight(name="log_scale", shape=event, initializer="zeros")
        self.shift = self.add_weight(name="shift", shape=event, initializer="zeros")

    def initialize(self, x, eps: float = 1e-6):
        """Set shift and scale from a batch ``x`` (N, ...): zero mean, unit variance per entry."""
        x = np.asarray(ops.convert_to_numpy(x), dtype="float64")
        self.shift.assign((-x.mean(0)).astype("float32"))
        self.log_scale.assign((-np.log(x.std(0) + eps)).astype("float32"))

    def transform(self, x):
        x = ops.convert_to_tensor(x)
        return (x + self.shift) * ops.exp(self.log_scale), ops.zeros((ops.shape(x)[0],)) + ops.sum(self.log_scale)

    def inverse(self, y):
        y = ops.convert_to_tensor(y)
        return y * ops.exp(-self.log_scale) - self.shift, ops.zeros((ops.shape(y)[0],)) - ops.sum(self.log_scale)

    def call(self, x):
        return self.transform(x)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="genlib")
class RealNVP(keras.Model):
    """RealNVP: a stack of affine couplings with a standard-normal latent.

    **Vectors** (``event_shape=(D,)``): ``couplings_per_scale`` couplings whose checkerboard
    masks alternate in parity; inputs are real vectors. ``num_scales`` must be 1.

    **Images** (``event_shape=(H, W, C)``): integer pixels are dequantised (``UniformDequantize``),
    sent through ``LogitTransform`` and an ``ElementwiseAffine`` (set from data by ``initialize``);
    then, at each of ``num_scales`` scales, ``couplings_per_scale`` checkerboard couplings; on every
    scale but the last, a ``Squeeze``, ``couplings_per_scale`` channel couplings, and half of the
    channels factored out to the latent (they skip the rest of the flow). H and W must be divisible
    by 2^(num_scales - 1).

    ``couplings_per_scale``, ``hidden`` and ``num_hidden`` take one int for every scale or a list with
    one per scale, finest first. Capacity is cheapest at the coarsest scale (a quarter of the
    positions of the one before), and only there can a few 3×3 convolutions see the whole image.

    Args:
        event_shape: (D,) or (H, W, C).
        num_scales: scales of the multi-scale architecture (images).
        couplings_per_scale: couplings in each group (vectors: in total); an int or one per scale.
        hidden: width of the coupling networks (units or filters); an int or one per scale.
        num_hidden: hidden layers of the coupling networks; an int or one per scale.
        levels: intensity levels of integer images.
        alpha: margin of the logit transform.
        seed: seed of the dequantisation noise.

    ``call`` returns ``(z, log_det)``: z (batch, D) flat, with the log-determinant of the map from
    continuous data (dequantised images in [0, 1]) to z. ``fit`` minimises the NLL per dimension
    and reports ``bits_per_dim`` (images, the bound on the discrete data) or ``nll`` (vectors, nats).
    """

    def __init__(self, event_shape, num_scales: int = 2, couplings_per_scale: int = 3, hidden: int = 64,
                 num_hidden: int = 2, levels: int = 256, alpha: float = 0.05, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = _event_shape(event_shape, "RealNVP")
        num_scales = _util.positive_int("num_scales", num_scales)
        self.is_image = len(self.event_shape) == 3
        if not self.is_image and num_scales != 1:
            raise ValueError(f"a vector flow has one scale; got num_scales={num_scales}.")
        if self.is_image:
            factor = 2 ** (num_scales - 1)
            if self.event_shape[0] % factor or self.event_shape[1] % factor:
                raise ValueError(f"{num_scales} scales squeeze {num_scales - 1} times: H and W must be divisible by "
                                 f"{factor}, got image shape {self.event_shape}.")
        self.num_scales = int(num_scales)
        self.couplings_per_scale, couplings = _per_scale("couplings_per_scale", couplings_per_scale, self.num_scales)
        self.hidden, widths = _per_scale("hidden", hidden, self.num_scales)
        self.num_hidden, depths = _per_scale("num_hidden", num_hidden, self.num_scales)
        self.levels = _util.positive_int("levels", levels, 2)
        self.alpha, self.seed = _util.fraction("alpha", alpha, high=0.5), seed
        self.num_dims = int(np.prod(self.event_shape))

        def group(mask_type, tag, scale=0):
            return [AffineCoupling(mask_type, i % 2, widths[scale], depths[scale], name=f"{tag}_{i}")
                    for i in range(couplings[scale])]

        self.flow_layers, self.factor_after = [], []  # factor out after these layer indices
        if self.is_image:
            self.dequantize = UniformDequantize(self.levels, seed=seed, name="dequantize")
            self.logit = LogitTransform(self.alpha, name="logit")
            self.normalize = ElementwiseAffine(name="normalize")
            for scale in range(self.num_scales):
                self.flow_layers += group("checkerboard", f"s{scale}_checker", scale)
                if scale < self.num_scales - 1:
                    self.flow_layers.append(Squeeze(name=f"s{scale}_squeeze"))
                    self.flow_layers += group("channel", f"s{scale}_channel", scale)
                    self.factor_after.append(len(self.flow_layers) - 1)
        else:
            self.flow_layers = group("checkerboard", "coupling")
        self.tracker = keras.metrics.Mean(name="bits_per_dim" if self.is_image else "nll")

    def build(self, input_shape=None):
        shape, self.part_shapes = (None, *self.event_shape), []
        if self.is_image:
            self.normalize.build(shape)
        for i, layer in enumerate(self.flow_layers):
            layer.build(shape)
            shape = layer.compute_output_shape(shape) if isinstance(layer, Squeeze) else shape
            if i in self.factor_after:
                self.part_shapes.append((*shape[1:-1], shape[-1] // 2))
                shape = (*shape[:-1], shape[-1] - shape[-1] // 2)
        self.part_shapes.append(tuple(shape[1:]))
        self.built = True

    # -- the flow -------------------------------------------------------------------------------

    def transform(self, x, return_steps: bool = False):
        """Continuous data to latent: ``(z, log_det)``, z (batch, D); images take x in [0, 1].

        With ``return_steps``, also the list of values after each layer (the first is the input, or the
        normalised logits for images), before any factoring out: to watch points move (2-D flows).
        """
        x = ops.convert_to_tensor(x, "float32")
        self._check_shape(x)
        if self.is_image:
            h, log_det = self.logit.transform(x)
            h, ld = self.normalize.transform(h)
            log_det = log_det + ld
        else:
            h, log_det = x, ops.zeros((ops.shape(x)[0],))
        parts, steps = [], [h]
        for i, layer in enumerate(self.flow_layers):
            h, ld = layer.transform(h)
            log_det = log_det + ld
            steps.append(h)
            if i in self.factor_after:
                # Half the channels leave the flow here: modelled as latent, no further computation.
                c = h.shape[-1] // 2
                parts.append(ops.reshape(h[..., :c], (ops.shape(h)[0], -1)))
                h = h[..., c:]
        parts.append(ops.reshape(h, (ops.shape(h)[0], -1)))
        z = ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return (z, log_det, steps) if return_steps else (z, log_det)

    def inverse(self, z):
        """Latent to data: ``(x, log_det)`` with log_det of the inverse map; z (batch, D)."""
        z = ops.convert_to_tensor(z, "float32")
        if len(z.shape) != 2 or z.shape[1] != self.num_dims:
            raise ValueError(f"z must have shape (batch, {self.num_dims}), got {tuple(z.shape)}.")
        sizes = [int(np.prod(s)) for s in self.part_shapes]
        parts = ops.split(z, np.cumsum(sizes)[:-1].tolist(), axis=1) if len(sizes) > 1 else [z]
        parts = [ops.reshape(p, (-1, *s)) for p, s in zip(parts, self.part_shapes)]
        h, log_det, factored = parts[-1], ops.zeros((ops.shape(z)[0],)), parts[:-1]
        for i in reversed(range(len(self.flow_layers))):
            if i in self.factor_after:
                h = ops.concatenate([factored.pop(), h], axis=-1)
            h, ld = self.flow_layers[i].inverse(h)
            log_det = log_det + ld
        if self.is_image:
            h, ld = self.normalize.inverse(h)
            h, ld2 = self.logit.inverse(h)
            log_det = log_det + ld + ld2
        return h, log_det

    def initialize(self, q):
        """Data-dependent start (images): set ``normalize`` so that the logits of a batch ``q`` of
        integer images are standardised per pixel. Call once, before training."""
        if not self.is_image:
            raise ValueError("initialize is for image flows.")
        self._check_shape(ops.convert_to_tensor(np.asarray(q[:1]), "float32"))
        if not self.built:
            self.build()
        self.normalize.initialize(self.logit.transform(self.dequantize(q))[0])

    def call(self, inputs, training=False):
        x = self.dequantize(inputs) if self.is_image else inputs
        return self.transform(x)

    def _check_shape(self, x):
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected inputs (batch, {', '.join(map(str, self.event_shape))}), "
                             f"got shape {tuple(x.shape)}.")

    # -- likelihood -------------------------------------------------------------------------------

    def log_prob_from_latent(self, z, log_det):
        """``log N(z; 0, I) + log_det`` in nats, per example (batch,)."""
        return ops.sum(normal_log_density(z, 0.0, 0.0), axis=1) + log_det

    def log_prob(self, x, batch_size: int = 512) -> np.ndarray:
        """Log density of continuous data (vectors, or images in [0, 1]) in nats, shape (N,)."""
        out = []
        for i in range(0, len(x), batch_size):
            z, log_det = self.transform(x[i: i + batch_size])
            out.append(ops.convert_to_numpy(self.log_prob_from_latent(z, log_det)))
        return np.concatenate(out).astype("float64")

    def discrete_nll(self, q, batch_size: int = 512) -> np.ndarray:
        """Upper bound on ``-log P(q)`` in nats for integer images, one dequantisation draw each, shape (N,).

        ``-log P(q) <= E_u[-log p(y)] - D log((1 - margin) / levels)``: the density of the
        dequantised ``y`` plus the log-determinant of ``u -> y``. This is a discrete NLL, so
        ``distributions.bits_per_dim(nll, D)`` (no ``levels``) turns it into bits per dimension.
        """
        if not self.is_image:
            raise ValueError("discrete_nll is for image flows over integer pixels.")
        q = np.asarray(q)
        if q.size and (q.min() < 0 or q.max() >= self.levels):
            raise ValueError(f"pixels must be integers in [0, {self.levels - 1}], got [{q.min()}, {q.max()}].")
        log_p_y = np.concatenate([self.log_prob(ops.convert_to_numpy(self.dequantize(q[i: i + batch_size])))
                                  for i in range(0, len(q), batch_size)])
        return -log_p_y - self.num_dims * self.dequantize.log_det_per_dim

    def bits_per_dim(self, q, batch_size: int = 512) -> float:
        """Mean bound on -log2 P(q) per pixel: comparable with ``baselines.PixelCategorical.bits_per_dim``."""
        return float(np.mean(bits_per_dim(self.discrete_nll(q, batch_size), self.num_dims)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        z, log_det = y_pred
        nll = -ops.mean(self.log_prob_from_latent(z, log_det)) / self.num_dims  # nats per dimension
        if self.is_image:
            # The same bound as discrete_nll, per dimension, in bits (distributions.bits_per_dim's convention).
            self.tracker.update_state((nll - self.dequantize.log_det_per_dim) / math.log(2.0))
        else:
            self.tracker.update_state(nll * self.num_dims)
        return nll

    @property
    def metrics(self):
        return [self.tracker]

    # -- sampling ---------------------------------------------------------------------------------

    def decode(self, z, batch_size: int = 500) -> np.ndarray:
        """Latent codes (n, D) through the inverse flow, as NumPy in the data convention.

        Images: float32 (n, H, W, C) clipped to [0, 1] (the dequantised-pixel scale; multiply
        by ``levels`` and floor for integers). Vectors: float32 (n, D).
        """
        z = np.asarray(ops.convert_to_numpy(z), dtype="float32")
        batch_size = _util.positive_int("batch_size", batch_size)
        x = np.concatenate([ops.convert_to_numpy(self.inverse(z[i: i + batch_size])[0])
                            for i in range(0, len(z), batch_size)])
        return np.clip(x, 0.0, 1.0) if self.is_image else x

    def generate(self, n: int, *, seed=None, batch_size: int = 500, progress: bool | None = False,
                 temperature: float = 1.0) -> np.ndarray:
        """Draw ``n`` examples: ``z ~ N(0, T^2 I)`` through the inverse flow (``decode``).

        Args:
            n: number of samples.
            seed: int (the same seed and batch_size give the same samples) or None (fresh randomness).
            batch_size: samples decoded at once.
            progress: a progress bar over samples (None: shown except under the smoke profile; off by
                default, as one inverse pass per batch is quick).
            temperature: standard deviation T of the latent; T < 1 trades variety for typicality.

        Returns NumPy float32: images (n, H, W, C) in [0, 1], or vectors (n, D).
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        temperature = _util.number("temperature", temperature, low=0.0, low_open=True)
        seed_generator = keras.random.SeedGenerator(seed)  # one stream for all batches: a seed fixes them all
        out = []
        with _util.Progress(n, enabled=progress, unit="sample", label="RealNVP sampling") as bar:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                out.append(self.decode(temperature * keras.random.normal((m, self.num_dims), seed=seed_generator)))
                bar.update(start + m)
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "event_shape": self.event_shape, "num_scales": self.num_scales,
                # Tuples as lists: the config is JSON, and a list is what the argument accepts back.
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in (
                    ("couplings_per_scale", self.couplings_per_scale), ("hidden", self.hidden),
                    ("num_hidden", self.num_hidden))}, "levels": self.levels, "alpha": self.alpha, "seed": self.seed}
