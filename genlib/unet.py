"""The noise predictor of the diffusion chapters: a small U-Net conditioned on the time step.

* ``SinusoidalEmbedding``: the time step as a vector of sines and cosines.
* ``ResBlock``: group norm, swish, convolution, twice, with the time (and label) embedding
  added in between and a residual connection.
* ``AttentionBlock``: self-attention over the pixels of a feature map (lowest resolution only).
* ``CrossAttention``: the pixels of a feature map attend to a sequence of text tokens (queries
  from the image, keys and values from the text, padding masked), as in Stable Diffusion.
* ``UNet``: encoder levels, a bottleneck, decoder levels with skip connections; optional
  class labels (with a null label for classifier-free guidance), condition vectors
  (``condition_dim``, e.g. text embeddings; the zero vector is their null), or a token
  sequence read by cross-attention (``context_dim``; the all-padding sequence is its null).

Chapter 7 (chapters/07_diffusion.ipynb) shows these blocks; ``genlib.diffusion`` trains them, and
chapter 12 (chapters/12_multimodal.ipynb) conditions them on text embeddings and text tokens.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib._util import optional_positive_int, positive_int


@keras.saving.register_keras_serializable(package="genlib")
class SinusoidalEmbedding(keras.layers.Layer):
    """The transformer's position encoding applied to the time step.

    ``emb(t) = [sin(t w_0), ..., sin(t w_{d/2-1}), cos(t w_0), ...]`` with geometric
    frequencies ``w_k = max_period^(-k / (d/2))``: nearby steps get nearby vectors, and the
    network can read both coarse and fine time.

    Args:
        dim: even embedding size.
        max_period: the slowest wavelength.

    Shapes: (batch,) -> (batch, dim).
    """

    def __init__(self, dim: int, max_period: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        if positive_int("dim", dim) % 2:
            raise ValueError(f"dim must be even (half sines, half cosines), got {dim}.")
        self.dim, self.max_period = int(dim), float(max_period)

    def call(self, t):
        half = self.dim // 2
        freqs = np.exp(-math.log(self.max_period) * np.arange(half) / half).astype("float32")
        angles = ops.cast(ops.reshape(t, (-1, 1)), "float32") * freqs
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)


    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "max_period": self.max_period}


def _check_groups(channels, groups):
    if channels % groups:
        raise ValueError(f"group norm needs channels divisible by groups, got {channels} channels and "
                         f"{groups} groups.")


@keras.saving.register_keras_serializable(package="genlib")
class ResBlock(keras.layers.Layer):
    """Residual block with time conditioning: GN → swish → conv → + dense(emb) → GN → swish → conv, + skip.

    The embedding is added as a per-channel bias after the first convolution, so every
    block knows how noisy its input is. The skip is a 1×1 convolution when channels change.

    Args:
        filters: output channels.
        groups: groups of the group normalisations (must divide the channel counts).

    Shapes: x (batch, H, W, C), emb (batch, E) -> (batch, H, W, filters).
    """

    def __init__(self, filters: int, groups: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.groups = positive_int("filters", filters), positive_int("groups", groups)
        _check_groups(self.filters, self.groups)
        self.norm1 = keras.layers.GroupNormalization(self.groups, name="norm1")
        self.conv1 = keras.layers.Conv2D(self.filters, 3, padding="same", name="conv1")
        self.emb_proj = keras.layers.Dense(self.filters, name="emb_proj")
        self.norm2 = keras.layers.GroupNormalization(self.groups, name="norm2")
        # Zero init: each block starts as the identity (through the skip), which steadies early training.
        self.conv2 = keras.layers.Conv2D(self.filters, 3, padding="same", kernel_initializer="zeros", name="conv2")
        self.skip = None

    def build(self, x_shape, emb_shape):
        channels = x_shape[-1]
        _check_groups(channels, self.groups)
        out = (*x_shape[:-1], self.filters)
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.emb_proj.build(emb_shape)
        self.norm2.build(out)
        self.conv2.build(out)
        if channels != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1, name="skip")
            self.skip.build(x_shape)

    def call(self, x, emb):
        h = self.conv1(ops.silu(self.norm1(x)))
        h = h + ops.reshape(self.emb_proj(ops.silu(emb)), (-1, 1, 1, self.filters))
        h = self.conv2(ops.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups}


@keras.saving.register_keras_serializable(package="genlib")
class AttentionBlock(keras.layers.Layer):
    """Self-attention over all pixels of a feature map, with a residual connection.

    Used at the lowest resolution only: its cost grows with (H W)^2, and there few pixels
    must exchange information across the whole image.

    Args:
        num_heads: attention heads (must divide the channels).
        groups: groups of the group normalisation.

    Shapes: (batch, H, W, C) -> (batch, H, W, C).
    """

    def __init__(self, num_heads: int = 1, groups: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.groups = positive_int("num_heads", num_heads), positive_int("groups", groups)
        self.norm = keras.layers.GroupNormalization(self.groups, name="norm")
        self.attention = None

    def build(self, input_shape):
        channels = input_shape[-1]
        _check_groups(channels, self.groups)
        if channels % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide the channels ({channels}).")
        self.attention = keras.layers.MultiHeadAttention(self.num_heads, channels // self.num_heads, name="mha")
        self.norm.build(input_shape)
        seq = (input_shape[0], None, channels)
        self.attention.build(seq, seq)

    def call(self, x):
        b, h, w, c = ops.shape(x)
        seq = ops.reshape(self.norm(x), (b, h * w, c))
        return x + ops.reshape(self.attention(seq, seq), (b, h, w, c))


    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "groups": self.groups}


@keras.saving.register_keras_serializable(package="genlib")
class CrossAttention(keras.layers.Layer):
    """Cross-attention from an image feature map to a token sequence, with a residual connection.

    Every pixel ``n`` asks a query ``q_n = W_q GN(h)_n``; every token ``l`` offers a key
    ``k_l = W_k c_l`` and a value ``v_l = W_v c_l``. Per head,
    ``a_nl = softmax_l(q_n . k_l / sqrt(d_head))`` over the *unmasked* tokens only, and the block
    returns ``h + W_o sum_l a_nl v_l``. A padding token (mask 0) gets logit -1e9, so its weight is
    exactly 0 and its features change nothing. A row with no token at all (the null context of
    classifier-free guidance) adds exactly 0: the block is then the identity. ``W_o`` starts at
    zero, so an untrained block is the identity too.

    Args:
        num_heads: attention heads (must divide the feature map's channels).
        groups: groups of the group normalisation of the queries.

    Shapes: x (batch, H, W, C), context (batch, L, D_c), mask (batch, L) bool/0-1 or None (all tokens)
    -> (batch, H, W, C); with ``return_attention=True`` also the weights (batch, heads, H W, L).
    """

    def __init__(self, num_heads: int = 1, groups: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.groups = positive_int("num_heads", num_heads), positive_int("groups", groups)
        self.norm = keras.layers.GroupNormalization(self.groups, name="norm")
        self.query = self.key = self.value = self.out = None

    def build(self, x_shape, context_shape, mask_shape=None):
        if len(x_shape) != 4 or len(context_shape) != 3:
            raise ValueError(f"CrossAttention expects x (batch, H, W, C) and context (batch, L, D_c), got {x_shape} "
                             f"and {context_shape}.")
        channels = x_shape[-1]
        _check_groups(channels, self.groups)
        if channels % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide the channels ({channels}).")
        self.query = keras.layers.Dense(channels, use_bias=False, name="query")
        self.key = keras.layers.Dense(channels, use_bias=False, name="key")
        self.value = keras.layers.Dense(channels, use_bias=False, name="value")
        # Zero init: the block starts as the identity and learns how much text to let in.
        self.out = keras.layers.Dense(channels, kernel_initializer="zeros", name="out")
        self.norm.build(x_shape)
        self.query.build((None, None, channels))
        self.key.build((None, None, context_shape[-1]))
        self.value.build((None, None, context_shape[-1]))
        self.out.build((None, None, channels))

    def _heads(self, x):  # (batch, N, C) -> (batch, heads, N, C / heads)
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, n, self.num_heads, -1)), (0, 2, 1, 3))

    def call(self, x, context, mask=None, return_attention=False):
        b, h, w, c = ops.shape(x)
        q = self._heads(self.query(ops.reshape(self.norm(x), (b, h * w, c))))
        k, v = self._heads(self.key(context)), self._heads(self.value(context))
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(c // self.num_heads)
        if mask is not None:
            mask = ops.cast(mask, "bool")
            logits = ops.where(mask[:, None, None, :], logits, -1e9)
        weights = ops.softmax(logits, axis=-1)
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (b, h * w, c))
        out = self.out(out)
        if mask is not None:  # no token at all (the null context): add nothing
            out = out * ops.cast(ops.any(mask, axis=-1), out.dtype)[:, None, None]
        y = x + ops.reshape(out, (b, h, w, c))
        return (y, weights) if return_attention else y

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "groups": self.groups}


@keras.saving.register_keras_serializable(package="genlib")
class UNet(keras.layers.Layer):
    """The noise predictor ``eps_theta(x_t, t[, label])``: a U-Net of residual blocks.

    Down path: a 3×3 stem, then per level ``blocks_per_level`` ResBlocks and a stride-2
    convolution (except at the last level). Middle: ResBlock, self-attention (optional),
    ResBlock. Up path: per level ``blocks_per_level + 1`` ResBlocks, each reading the matching
    down-path activation (concatenated skip), then nearest upsampling + 3×3 convolution.
    The time step enters every ResBlock through a sinusoidal embedding and a 2-layer MLP;
    a class label, if any, adds a learned embedding to it. Label ``num_classes`` is the
    *null label* ("no class") used for classifier-free guidance. Alternatively a condition
    *vector* (``condition_dim``, e.g. a text embedding) adds a linear projection of itself;
    its null is the zero vector. Or a *token sequence* (``context_dim``, e.g. a text encoder's
    per-token outputs) is read by a ``CrossAttention`` block after every ResBlock; its null is
    the all-padding sequence (mask all 0), for which every cross-attention block is the identity.

    Args:
        widths: channels per resolution level, e.g. (32, 64); len(widths) - 1 halvings, so the
            image side must be divisible by 2^(len(widths) - 1).
        blocks_per_level: ResBlocks per level on the way down.
        attention: self-attention at the lowest resolution.
        num_classes: number of classes for conditioning, or None (unconditional).
        condition_dim: size of a condition vector given in place of labels, or None
            (exclusive with num_classes).
        context_dim: size D_c of the context tokens read by cross-attention, or None
            (exclusive with num_classes and condition_dim).
        context_heads: heads of the cross-attention blocks (must divide every width).
        image_channels: channels of the images (and of the predicted noise).
        groups: group-norm groups (must divide every width).

    Shapes: x_t (batch, H, W, image_channels), t (batch,) int, labels (batch,) int, or
    (batch, condition_dim) float with ``condition_dim``, or a pair (context (batch, L, context_dim),
    mask (batch, L)) with ``context_dim``, or None -> (batch, H, W, image_channels).
    """

    def __init__(self, widths=(32, 64), blocks_per_level: int = 1, attention: bool = True,
                 num_classes: int | None = None, image_channels: int = 1, groups: int = 8,
                 condition_dim: int | None = None, context_dim: int | None = None, context_heads: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        widths = tuple(positive_int("widths entry", w) for w in widths)
        if not widths:
            raise ValueError("widths must name at least one level, got ().")
        self.groups = positive_int("groups", groups)
        for w in widths:
            _check_groups(w, self.groups)
        self.widths, self.blocks_per_level = widths, positive_int("blocks_per_level", blocks_per_level)
        self.attention = bool(attention)
        self.num_classes = optional_positive_int("num_classes", num_classes)
        self.image_channels = positive_int("image_channels", image_channels)
        self.condition_dim = optional_positive_int("condition_dim", condition_dim)
        self.context_dim = optional_positive_int("context_dim", context_dim)
        self.context_heads = positive_int("context_heads", context_heads)
        given = [k for k, v in (("num_classes", num_classes), ("condition_dim", condition_dim),
                                ("context_dim", context_dim)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of num_classes, condition_dim and context_dim, got {given}.")
        if self.context_dim is not None:
            for w in widths:
                if w % self.context_heads:
                    raise ValueError(f"context_heads ({context_heads}) must divide every width, got {widths}.")
        emb = 4 * widths[0]
        self.time_embedding = SinusoidalEmbedding(widths[0], name="time_embedding")
        self.time_mlp = [keras.layers.Dense(emb, activation="silu", name="time_mlp_0"),
                         keras.layers.Dense(emb, name="time_mlp_1")]
        self.label_embedding = (None if self.num_classes is None else
                                keras.layers.Embedding(self.num_classes + 1, emb, name="label_embedding"))
        self.condition_projection = (None if self.condition_dim is None else
                                     keras.layers.Dense(emb, name="condition_projection"))
        self.stem = keras.layers.Conv2D(widths[0], 3, padding="same", name="stem")
        self.down, self.up = [], []
        # One cross-attention block after each ResBlock, keyed by the ResBlock's name.
        self.cross = {}

        def res(filters, name):
            if self.context_dim is not None:
                self.cross[name] = CrossAttention(self.context_heads, groups, name=f"{name}_cross")
            return ResBlock(filters, groups, name=name)

        for i, w in enumerate(widths):
            self.down += [res(w, f"down{i}_{j}") for j in range(self.blocks_per_level)]
            if i < len(widths) - 1:
                self.down.append(keras.layers.Conv2D(w, 3, strides=2, padding="same", name=f"downsample{i}"))
        self.mid = [res(widths[-1], "mid_0"),
                    AttentionBlock(1, groups, name="mid_attention") if self.attention else None,
                    res(widths[-1], "mid_1")]
        for i in reversed(range(len(widths))):
            self.up += [res(widths[i], f"up{i}_{j}") for j in range(self.blocks_per_level + 1)]
            if i > 0:
                self.up += [keras.layers.UpSampling2D(2, name=f"upsample{i}"),
                            keras.layers.Conv2D(widths[i - 1], 3, padding="same", name=f"upconv{i}")]
        self.out_norm = keras.layers.GroupNormalization(groups, name="out_norm")
        # Zero init: the untrained net predicts eps = 0, the trivial predictor, and improves from there.
        self.out_conv = keras.layers.Conv2D(self.image_channels, 3, padding="same", kernel_initializer="zeros",
                                            name="out_conv")

    def build(self, x_shape, t_shape=None, labels_shape=None):
        b, h, w, c = x_shape
        factor = 2 ** (len(self.widths) - 1)
        if h is None or w is None or h % factor or w % factor or c != self.image_channels:
            raise ValueError(f"UNet with {len(self.widths)} levels needs images (batch, H, W, {self.image_channels}) "
                             f"with H and W divisible by {factor}, got {x_shape}.")
        # One symbolic pass builds every sublayer with the shapes it will see.
        labels = None if self.label_embedding is None else keras.KerasTensor((b,), dtype="int32")
        if self.condition_projection is not None:
            labels = keras.KerasTensor((b, self.condition_dim))
        if self.context_dim is not None:
            labels = (keras.KerasTensor((b, None, self.context_dim)), keras.KerasTensor((b, None), dtype="bool"))
        self.call(keras.KerasTensor(x_shape), keras.KerasTensor((b,), dtype="int32"), labels)

    # -- the conditioning's null, in one place (used by the training and guidance code) ---------

    def null_condition(self, labels):
        """The "no condition" input shaped like ``labels``: the null label, the zero vector, or the
        same tokens with an all-zero mask (all padding)."""
        if self.context_dim is not None:
            context, mask = self._context(labels)
            return context, ops.zeros_like(ops.cast(mask, "bool"))
        if self.condition_dim is not None:
            return ops.zeros_like(ops.cast(labels, "float32"))
        return ops.full(ops.shape(labels), self.num_classes, dtype="int32")

    def drop_condition(self, labels, drop):
        """``labels`` with the rows where ``drop`` (batch,) bool is True replaced by the null condition."""
        if self.context_dim is not None:
            context, mask = self._context(labels)
            return context, ops.logical_and(ops.cast(mask, "bool"), ops.logical_not(drop)[:, None])
        if self.condition_dim is not None:
            return ops.where(ops.expand_dims(drop, -1), 0.0, ops.cast(labels, "float32"))
        return ops.where(drop, self.num_classes, ops.cast(labels, "int32"))

    def _context(self, labels):
        if not isinstance(labels, (tuple, list)) or len(labels) != 2:
            raise ValueError(f"a UNet with context_dim expects labels = (context (batch, L, {self.context_dim}), "
                             f"mask (batch, L)), got {type(labels).__name__}.")
        context, mask = labels
        if len(context.shape) != 3 or context.shape[-1] != self.context_dim or len(mask.shape) != 2:
            raise ValueError(f"context must be (batch, L, {self.context_dim}) and mask (batch, L), got "
                             f"{tuple(context.shape)} and {tuple(mask.shape)}.")
        return ops.cast(context, "float32"), mask

    def conditioning(self, batch, t, labels=None):
        """What every ResBlock reads besides its input: the embedding of t plus that of the label or
        condition vector, and the context tokens and mask for cross-attention (None without text).
        ``labels=None`` is the null condition: the null label, the zero vector, or no text."""
        emb = self.time_mlp[1](self.time_mlp[0](self.time_embedding(t)))
        if self.label_embedding is not None:
            if labels is None:
                labels = ops.full((batch,), self.num_classes, dtype="int32")
            emb = emb + self.label_embedding(ops.cast(labels, "int32"))
        elif self.condition_projection is not None:
            if labels is None:
                labels = ops.zeros((batch, self.condition_dim))
            emb = emb + self.condition_projection(ops.cast(labels, "float32"))
        context = mask = None
        if self.context_dim is not None and labels is not None:  # no text: every cross-attention is skipped
            context, mask = self._context(labels)
        return emb, context, mask

    def call(self, x, t, labels=None):
        emb, context, mask = self.conditioning(ops.shape(x)[0], t, labels)

        def res(layer, h):
            h = layer(h, emb)
            return h if context is None else self.cross[layer.name](h, context, mask)

        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = res(layer, h) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            if layer is not None:
                h = res(layer, h) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            h = res(layer, ops.concatenate([h, skips.pop()], axis=-1)) if isinstance(layer, ResBlock) else layer(h)
        return self.out_conv(ops.silu(self.out_norm(h)))


    def get_config(self):
        return {**super().get_config(), "widths": list(self.widths), "blocks_per_level": self.blocks_per_level,
                "attention": self.attention, "num_classes": self.num_classes,
                "image_channels": self.image_channels, "groups": self.groups, "condition_dim": self.condition_dim,
                "context_dim": self.context_dim, "context_heads": self.context_heads}
