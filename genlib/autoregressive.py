"""Autoregressive image models: PixelCNN and its pieces. Chapter 4 (chapters/04_pixelcnn.ipynb).

An image is a sequence of pixels in raster order (row by row, left to right), and its
probability factorises by the chain rule, ``p(x) = prod_i p(x_i | x_<i)``. PixelCNN
computes every conditional at once with convolutions whose kernels are *masked* so that
output pixel ``i`` never sees input pixels ``j >= i``.

* ``kernel_mask``, ``MaskedConv2D``: the masked convolution (type ``"A"`` / ``"B"``).
* ``ResidualBlock``: 1×1 (halve channels) → masked B 3×3 → 1×1 (restore), plus the skip.
* ``PixelCNN``: masked A 7×7 → residual blocks → masked B 1×1 layers → per-pixel output,
  either a softmax over ``levels`` intensities or a discretised logistic mixture.
* ``bin_log_probs``, ``discretized_logistic_mixture_nll`` /
  ``discretized_logistic_mixture_log_probs``: the PixelCNN++ output distribution over 256
  levels, written with ``keras.ops``.
* ``sample_naive``, ``sample_fast``: sequential sampling, the naive way (a full forward pass
  per pixel) and the fast way (only the rows that can affect the next pixel). Both take the
  same pre-drawn noise (``distributions.gumbel_noise``), so they return identical images.
  ``PixelCNN.generate`` is the book-wide sampling API on top of them.
"""

from __future__ import annotations

import math
import weakref

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib.distributions import gumbel_max, gumbel_noise

MASK_TYPES = ("A", "B")


def kernel_mask(kernel_size: int, mask_type: str) -> np.ndarray:
    """The 0/1 mask of a raster-order causal convolution kernel, shape (k, k, 1, 1), float32.

    Rows above the centre are fully visible, the centre row up to the centre, nothing below.
    Type ``"A"`` hides the centre itself (the pixel being predicted), type ``"B"`` shows it.
    """
    k = _util.positive_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int (the mask needs a centre), got {kernel_size!r}.")
    _util.choice("mask_type", mask_type, MASK_TYPES)
    c = k // 2
    mask = np.zeros((k, k, 1, 1), dtype="float32")
    mask[:c] = 1.0  # every row above the centre
    mask[c, : c + (mask_type == "B")] = 1.0  # left of the centre; the centre only for type B
    return mask


@keras.saving.register_keras_serializable(package="genlib")
class MaskedConv2D(keras.layers.Layer):
    """Convolution that sees only pixels before the current one (raster order).

    Args:
        filters: output channels.
        kernel_size: odd int; the mask is built for a k×k window.
        mask_type: ``"A"`` hides the centre pixel (first layer), ``"B"`` shows it (later layers).
        activation: applied after the convolution (name or callable), default none.
        use_bias: add a learned bias.
        kernel_initializer: initialiser of the (unmasked) kernel.

    Shapes: (batch, H, W, C) -> (batch, H, W, filters), "same" padding.
    """

    def __init__(self, filters: int, kernel_size: int, mask_type: str = "B", activation=None,
                 use_bias: bool = True, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        # A NumPy constant (not a tensor made in build): a tensor created in build() inside a
        # functional model escapes TF's graph scope; a constant multiplied in call() does not.
        self.mask = kernel_mask(kernel_size, mask_type)
        self.filters = _util.positive_int("filters", filters)
        self.kernel_size, self.mask_type = int(kernel_size), mask_type
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    @property
    def reach(self) -> int:
        """Rows above the current one that this layer looks at."""
        return self.kernel_size // 2

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"MaskedConv2D needs a known channel count, got input shape {input_shape}.")
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, channels, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None

    def call(self, x):
        # The mask is re-applied at every call, so the zeroed taps stay zero whatever the optimizer does.
        y = ops.conv(x, self.kernel * self.mask, strides=1, padding="same")
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y)

    def last_row(self, above, row):
        """Output of one row only, given the layer's inputs on the ``reach`` rows above it.

        Args:
            above: (batch, reach, W, C) the inputs of the rows above (zeros above the image).
            row: (batch, 1, W, C) the input of the row itself.

        Returns ``(out, row)``: out (batch, 1, W, filters), and what to keep for the next row.
        """
        x = ops.concatenate([above, row], axis=1) if self.reach else row
        # Zero rows below and columns at the sides give "same" padding; the mask ignores the rows below.
        x = ops.pad(x, [[0, 0], [0, self.reach], [self.reach, self.reach], [0, 0]])
        y = ops.conv(x, self.kernel * self.mask, strides=1, padding="valid")
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y), row

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "mask_type": self.mask_type, "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias, "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="genlib")
class ResidualBlock(keras.layers.Layer):
    """PixelCNN residual block: ReLU → 1×1 (filters/2) → ReLU → masked B 3×3 → ReLU → 1×1 (filters), + skip.

    The 1×1 convolutions mix channels at a pixel (causal by construction); only the 3×3
    looks at neighbours, through a type-B mask, so the block keeps causality. The first
    ReLU is written ``ops.maximum(x, 0.0)``: the same function, but TensorFlow's oneDNN
    graph rewriter would fuse an ``ops.relu`` there into the previous block's convolution
    and skip-add, although that sum also feeds this block's skip, and would log
    "remapper failed" for the whole training and sampling graphs.

    Args:
        filters: channels in and out (even: the bottleneck has filters // 2).

    Shapes: (batch, H, W, filters) -> (batch, H, W, filters).
    """

    reach = 1  # the masked 3×3 looks one row up

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        if _util.positive_int("filters", filters, 2) % 2:
            raise ValueError(f"filters must be an even int >= 2 (the bottleneck halves it), got {filters!r}.")
        self.filters = int(filters)
        self.reduce = keras.layers.Conv2D(self.filters // 2, 1, activation="relu", name="reduce")
        self.masked = MaskedConv2D(self.filters // 2, 3, "B", activation="relu", name="masked")
        self.restore = keras.layers.Conv2D(self.filters, 1, name="restore")

    def build(self, input_shape):
        if input_shape[-1] != self.filters:
            raise ValueError(f"ResidualBlock({self.filters}) needs {self.filters} input channels, "
                             f"got input shape {input_shape}.")
        half = (*input_shape[:-1], self.filters // 2)
        self.reduce.build(input_shape)
        self.masked.build(half)
        self.restore.build(half)

    def call(self, x):
        return x + self.restore(self.masked(self.reduce(ops.maximum(x, 0.0))))  # maximum: a ReLU (see above)

    def last_row(self, above, row):
        """One row of output; ``above`` (batch, 1, W, filters // 2) is the masked 3×3's input on the row above.

        Returns ``(out, kept)``: out (batch, 1, W, filters) and the 3×3 input of this row, for the next.
        """
        inner = self.reduce(ops.maximum(row, 0.0))
        y, _ = self.masked.last_row(above, inner)
        return row + self.restore(y), inner

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


# ---------------------------------------------------------------------------
# Discretised logistic mixture (PixelCNN++)


def _split_mixture(params, num_mixtures: int):
    if params.shape[-1] != 3 * num_mixtures:
        raise ValueError(f"mixture params need 3 * num_mixtures = {3 * num_mixtures} channels "
                         f"(logit weights, means, log scales), got {params.shape[-1]}.")
    k = num_mixtures
    logit_pi, mu, log_s = params[..., :k], params[..., k: 2 * k], params[..., 2 * k:]
    return logit_pi, mu, ops.maximum(log_s, -7.0)  # a floor on the scale keeps exp(-log_s) finite


def bin_log_probs(x, logit_pi, mu, log_s, levels: int):
    """log P(bin centred at x) under a mixture of K logistics; x in [-1, 1] broadcasts against (..., K) params.

    ``logit_pi``, ``mu``, ``log_s``: mixture logits, means and log scales, each (..., K).
    Returns (...,) log-probabilities (the mixture axis summed out).
    """
    half = 1.0 / (levels - 1)  # half a bin in [-1, 1] units
    inv_s = ops.exp(-log_s)
    centred = x - mu
    plus_in, min_in = inv_s * (centred + half), inv_s * (centred - half)
    log_cdf_plus = plus_in - ops.softplus(plus_in)  # log sigmoid: the lowest bin takes all mass below it
    log_one_minus_cdf_min = -ops.softplus(min_in)  # log(1 - sigmoid): the highest bin takes all mass above
    cdf_delta = ops.sigmoid(plus_in) - ops.sigmoid(min_in)
    # Where the difference underflows, the density at the bin centre times the bin width is accurate.
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_s - 2.0 * ops.softplus(mid_in) + math.log(2.0 * half)
    inner = ops.where(cdf_delta > 1e-5, ops.log(ops.maximum(cdf_delta, 1e-12)), log_pdf_mid)
    log_p = ops.where(x < -1.0 + half, log_cdf_plus, ops.where(x > 1.0 - half, log_one_minus_cdf_min, inner))
    return ops.logsumexp(log_p + ops.log_softmax(logit_pi, axis=-1), axis=-1)


def discretized_logistic_mixture_nll(q, params, num_mixtures: int, levels: int = 256):
    """Negative log-likelihood (nats) of integer pixels under a discretised logistic mixture.

    Each intensity ``q`` in 0..levels-1 is mapped to ``x = 2 q / (levels - 1) - 1`` in [-1, 1];
    its probability is the mixture's mass on the bin ``[x - 1/(levels-1), x + 1/(levels-1)]``,
    with the end bins stretched to -inf and +inf so that the masses sum to one.

    Args:
        q: integer pixels, shape (...,).
        params: (..., 3 * num_mixtures): mixture logits, means (in [-1, 1] units), log scales.
        num_mixtures: K, logistics per pixel.
        levels: intensity levels.

    Returns: NLL per pixel, shape (...,).
    """
    logit_pi, mu, log_s = _split_mixture(params, num_mixtures)
    x = 2.0 * ops.cast(q, params.dtype) / (levels - 1) - 1.0
    return -bin_log_probs(x[..., None], logit_pi, mu, log_s, levels)


def discretized_logistic_mixture_log_probs(params, num_mixtures: int, levels: int = 256):
    """log P(q) for every intensity q = 0..levels-1: (..., 3K) params -> (..., levels) log-probabilities."""
    logit_pi, mu, log_s = _split_mixture(params, num_mixtures)
    x = ops.reshape(ops.linspace(-1.0, 1.0, levels), (levels, 1))  # bins on a new axis before K
    expand = lambda t: ops.expand_dims(t, -2)
    return bin_log_probs(x, expand(logit_pi), expand(mu), expand(log_s), levels)


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class PixelCNN(keras.Model):
    """PixelCNN for single-channel integer images.

    masked A 7×7 (filters) → ``num_blocks`` × ``ResidualBlock`` → ReLU → ``head_layers`` ×
    masked B 1×1 (filters, ReLU) → masked B 1×1 to the output distribution's parameters.

    Args:
        image_shape: (H, W, 1).
        levels: intensity levels k of the integer input (``data.quantize``).
        filters: channels of the residual stream (even).
        num_blocks: residual blocks.
        head_layers: hidden masked B 1×1 layers before the output.
        output_dist: ``"categorical"`` (softmax over k levels) or ``"logistic_mixture"``
            (PixelCNN++'s discretised mixture of ``num_mixtures`` logistics).
        num_mixtures: logistics per pixel for ``"logistic_mixture"``.
        first_kernel: size of the type-A input convolution.

    Input (batch, H, W, 1) integers in 0..k-1; output (batch, H, W, k) logits, or
    (batch, H, W, 3 * num_mixtures) mixture parameters. ``fit(q)`` minimises the NLL and
    reports ``bits_per_dim``; ``generate(n)`` draws integer images.
    """

    def __init__(self, image_shape=(16, 16, 1), levels: int = 4, filters: int = 64, num_blocks: int = 5,
                 head_layers: int = 2, output_dist: str = "categorical", num_mixtures: int = 5,
                 first_kernel: int = 7, **kwargs):
        super().__init__(**kwargs)
        image_shape = _util.shape("image_shape", image_shape, 3)
        if image_shape[-1] != 1:
            raise ValueError(f"image_shape must be (H, W, 1) (one channel), got {image_shape}.")
        if _util.positive_int("levels", levels, 2) > 256:
            raise ValueError(f"levels must be an int in [2, 256], got {levels!r}.")
        self.image_shape, self.levels, self.filters = image_shape, int(levels), _util.positive_int("filters", filters)
        self.num_blocks = _util.positive_int("num_blocks", num_blocks, 0)
        self.head_layers = _util.positive_int("head_layers", head_layers, 0)
        self.output_dist = _util.choice("output_dist", output_dist, ("categorical", "logistic_mixture"))
        self.num_mixtures = _util.positive_int("num_mixtures", num_mixtures)
        self.first_kernel = _util.positive_int("first_kernel", first_kernel)
        out = self.levels if output_dist == "categorical" else 3 * self.num_mixtures
        self.stack = [MaskedConv2D(self.filters, self.first_kernel, "A", name="masked_a")]
        self.stack += [ResidualBlock(self.filters, name=f"block_{i}") for i in range(self.num_blocks)]
        self.stack += [keras.layers.Activation("relu", name="relu")]
        self.stack += [MaskedConv2D(self.filters, 1, "B", activation="relu", name=f"head_{i}")
                       for i in range(self.head_layers)]
        self.stack += [MaskedConv2D(out, 1, "B", name="out")]
        self.nll_tracker = keras.metrics.Mean(name="bits_per_dim")

    @property
    def receptive_rows(self) -> int:
        """R: output row r depends on input rows r-R..r only (the sum of the layers' reaches)."""
        return sum(getattr(layer, "reach", 0) for layer in self.stack)

    def build(self, input_shape=None):
        shape = (None, *self.image_shape)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def scale(self, q):
        """Integers 0..k-1 to floats in [-1, 1], the network's input."""
        return 2.0 * ops.cast(q, "float32") / (self.levels - 1) - 1.0

    def call(self, q):
        h = self.scale(q)
        for layer in self.stack:
            h = layer(h)
        return h

    def empty_row_caches(self, n: int) -> list:
        """For each layer that looks up (``reach`` > 0), zeros for the rows above the image's first row.

        Zeros are exactly what "same" padding puts there, so the cached pass of row 0 equals the full one.
        """
        h, w, _ = self.image_shape
        caches, shape = [], (n, h, w, 1)
        for layer in self.stack:
            if isinstance(layer, ResidualBlock):
                caches.append(ops.zeros((n, 1, w, layer.filters // 2)))
            elif getattr(layer, "reach", 0):
                caches.append(ops.zeros((n, layer.reach, w, shape[-1])))
            shape = layer.compute_output_shape(shape)
        return caches

    def row_outputs(self, caches, row):
        """Outputs of one image row, reusing the cached layer inputs of the rows above.

        Args:
            caches: list from ``empty_row_caches`` (then from the previous call), one per layer
                with ``reach`` > 0, each (batch, reach, W, channels).
            row: (batch, 1, W, 1) integers, the current row (pixels not yet drawn hold anything:
                the masks hide them from the outputs that matter).

        Returns ``(outputs, kept)``: outputs (batch, W, channels) of this row, and for each cache
        the layer input of this row; roll them into the caches once the row is complete.
        """
        h, kept, caches = self.scale(row), [], list(caches)
        for layer in self.stack:
            if getattr(layer, "reach", 0):
                h, keep = layer.last_row(caches.pop(0), h)
                kept.append(keep)
            else:
                h = layer(h)
        return h[:, 0], kept

    def log_probs_from_outputs(self, outputs):
        """Network outputs (..., channels) to log-probabilities over the k levels (..., k)."""
        if self.output_dist == "categorical":
            return ops.log_softmax(outputs, axis=-1)
        return discretized_logistic_mixture_log_probs(outputs, self.num_mixtures, self.levels)

    def pixel_nll(self, q, outputs):
        """NLL in nats of each pixel, (batch, H, W)."""
        target = ops.cast(q[..., 0], "int32")
        if self.output_dist == "categorical":
            return keras.losses.sparse_categorical_crossentropy(target, outputs, from_logits=True)
        return discretized_logistic_mixture_nll(target, outputs, self.num_mixtures, self.levels)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        nll = ops.mean(self.pixel_nll(x, y_pred))  # nats per dimension
        self.nll_tracker.update_state(nll / math.log(2.0))
        return nll

    @property
    def metrics(self):
        return [self.nll_tracker]

    def log_prob(self, q, batch_size: int = 256) -> np.ndarray:
        """log P(q) in nats per image, shape (N,), for integer images (N, H, W, 1)."""
        q = np.asarray(q)
        if q.ndim != 4 or q.shape[1:] != self.image_shape or q.min() < 0 or q.max() >= self.levels:
            raise ValueError(f"expected integer images (N, {', '.join(map(str, self.image_shape))}) in "
                             f"[0, {self.levels - 1}], got shape {q.shape}.")
        out = [-ops.convert_to_numpy(ops.sum(self.pixel_nll(b, self(b)), axis=(1, 2)))
               for b in (q[i: i + batch_size] for i in range(0, len(q), batch_size))]
        return np.concatenate(out).astype("float64")

    def bits_per_dim(self, q, batch_size: int = 256) -> float:
        """Mean -log2 P(q) per pixel, comparable with ``baselines.PixelCategorical.bits_per_dim``."""
        return float(-self.log_prob(q, batch_size).mean() / (np.prod(self.image_shape) * math.log(2.0)))

    def generate(self, n: int, *, seed=None, batch_size: int = 1000, progress: bool | None = None,
                 temperature: float = 1.0, sampler: str = "fast") -> np.ndarray:
        """``n`` images drawn pixel by pixel: **integer levels** (n, H, W, 1) in 0..levels-1, int32.

        (``data.dequantize(q, levels)`` maps them to [0, 1].)

        Args:
            n: number of images.
            seed: int (the same seed and batch_size give the same images) or None (fresh randomness).
            batch_size: images drawn at once.
            progress: a progress bar over rows (None: shown except under the smoke profile).
            temperature: divides the log-probabilities (T < 1: sharper, T > 1: noisier).
            sampler: ``"fast"`` (``sample_fast``) or ``"naive"`` (``sample_naive``); same images.
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        rows = {"fast": _fast_rows, "naive": _naive_rows}[_util.choice("sampler", sampler, ("fast", "naive"))]
        seed_generator = keras.random.SeedGenerator(seed)  # one noise stream for all batches: a seed fixes them all
        h = self.image_shape[0]
        starts = range(0, n, batch_size)
        out = []
        with _util.Progress(len(starts) * h, enabled=progress, unit="row", label="PixelCNN sampling") as bar:
            for i, start in enumerate(starts):
                noise, t = _prepare(self, min(batch_size, n - start), temperature, seed_generator, None)
                out.append(rows(self, noise, t, bar, done=i * h))
        return np.concatenate(out).astype("int32")

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape, "levels": self.levels,
                "filters": self.filters, "num_blocks": self.num_blocks, "head_layers": self.head_layers,
                "output_dist": self.output_dist, "num_mixtures": self.num_mixtures,
                "first_kernel": self.first_kernel}


# ---------------------------------------------------------------------------
# Sampling


_STEPS = weakref.WeakKeyDictionary()  # model -> its compiled steps, so repeated sampling traces once


def _pick(model, outputs, noise, temperature):
    # Temperature divides the log-probabilities: T < 1 sharpens, T > 1 flattens. Gumbel-max draws.
    return gumbel_max(model.log_probs_from_outputs(outputs), temperature, noise=noise)


def _steps(model: PixelCNN) -> dict:
    """Compiled one-row steps of both samplers: the column loop runs inside, in the same way for both."""
    if model not in _STEPS:
        h, w, _ = model.image_shape
        model_ref = weakref.ref(model)  # a strong reference in the steps would keep the model alive forever

        def naive_row(q, r, noise, temperature):
            model = model_ref()

            def draw(c, q):
                outputs = model(q)  # the full network, every pixel, to use one of them
                flat = ops.reshape(outputs, (-1, h * w, outputs.shape[-1]))
                value = _pick(model, ops.take(flat, r * w + c, axis=1), ops.take(noise, c, axis=1), temperature)
                here = ops.reshape(ops.arange(h * w) == r * w + c, (1, h, w, 1))
                return ops.where(here, ops.cast(value, q.dtype)[:, None, None, None], q)

            return ops.fori_loop(0, w, draw, q)

        def fast_row(caches, noise, temperature):
            model = model_ref()

            def draw(c, row):
                outputs, _ = model.row_outputs(caches, row)  # one row of every layer, not H rows
                value = _pick(model, ops.take(outputs, c, axis=1), ops.take(noise, c, axis=1), temperature)
                here = ops.reshape(ops.arange(w) == c, (1, 1, w, 1))
                return ops.where(here, ops.cast(value, row.dtype)[:, None, None, None], row)

            row = ops.fori_loop(0, w, draw, ops.zeros((ops.shape(noise)[0], 1, w, 1), "int32"))
            # The finished row's layer inputs become the newest cached rows; the oldest drop out.
            _, kept = model.row_outputs(caches, row)
            return row, [ops.concatenate([cache[:, 1:], new], axis=1) for cache, new in zip(caches, kept)]

        # The weights are the steps' state: under JAX they go in as arguments, so a step
        # compiled before (more) training still samples from the current weights.
        _STEPS[model] = {"naive": _util.compile_step(naive_row, state=model.variables),
                         "fast": _util.compile_step(fast_row, state=model.variables)}
    return _STEPS[model]


def _prepare(model, n, temperature, seed, noise):
    n = _util.positive_int("n", n)
    temperature = _util.number("temperature", temperature, low=0.0, low_open=True)
    if not model.built:
        model.build()
    h, w, _ = model.image_shape
    shape = (n, h, w, model.levels)
    noise = gumbel_noise(shape, seed) if noise is None else ops.convert_to_tensor(noise, "float32")
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape} (n, H, W, levels), got {tuple(noise.shape)}.")
    return noise, ops.convert_to_tensor(temperature, "float32")


def _naive_rows(model, noise, temperature, bar, done=0):
    step = _steps(model)["naive"]
    h, w, _ = model.image_shape
    q = ops.zeros((noise.shape[0], h, w, 1), "int32")
    for r in range(h):
        q = step(q, ops.convert_to_tensor(r, "int32"), noise[:, r], temperature)
        bar.update(done + r + 1)
    return ops.convert_to_numpy(q)


def _fast_rows(model, noise, temperature, bar, done=0):
    step = _steps(model)["fast"]
    caches, rows = model.empty_row_caches(noise.shape[0]), []
    for r in range(model.image_shape[0]):
        row, caches = step(caches, noise[:, r], temperature)
        rows.append(ops.convert_to_numpy(row))
        bar.update(done + r + 1)
    return np.concatenate(rows, axis=1)


def sample_naive(model: PixelCNN, n: int, temperature: float = 1.0, seed=None, noise=None,
                 progress: bool | None = False) -> np.ndarray:
    """Draw ``n`` images pixel by pixel, running the whole network once per pixel (H·W passes).

    Args:
        model: a ``PixelCNN``.
        n: number of images.
        temperature: divides the log-probabilities before sampling (T -> 0: the most likely level).
        seed: int or ``SeedGenerator`` for the noise; ignored when ``noise`` is given.
        noise: optional Gumbel noise (n, H, W, levels) from ``distributions.gumbel_noise``.
        progress: a progress bar over rows (None: shown except under the smoke profile).

    Returns integer images (n, H, W, 1) in 0..levels-1.
    """
    noise, temperature = _prepare(model, n, temperature, seed, noise)
    with _util.Progress(model.image_shape[0], enabled=progress, unit="row", label="sample_naive") as bar:
        return _naive_rows(model, noise, temperature, bar)


def sample_fast(model: PixelCNN, n: int, temperature: float = 1.0, seed=None, noise=None,
                progress: bool | None = False) -> np.ndarray:
    """Draw ``n`` images like ``sample_naive``, computing one row of each layer per pixel instead of H.

    Output row r depends only on rows r-R..r, and the layer inputs of the rows above r are fixed
    once those rows are drawn; so each layer keeps its inputs of the ``reach`` rows above
    (``PixelCNN.row_outputs``) and a step recomputes just the current row. Given the same
    ``noise`` (or seed) the images equal ``sample_naive``'s. Same arguments and return value.
    """
    noise, temperature = _prepare(model, n, temperature, seed, noise)
    with _util.Progress(model.image_shape[0], enabled=progress, unit="row", label="sample_fast") as bar:
        return _fast_rows(model, noise, temperature, bar)
