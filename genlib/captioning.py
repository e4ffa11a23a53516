"""Reading images into a frozen language model: a Flamingo-style captioner.

Chapter 12 (chapters/12_multimodal.ipynb). Flamingo (Alayrac et al. 2022) keeps a pretrained
vision encoder and a pretrained language model frozen and trains only what joins them:

* ``attend``: multi-head attention of queries to keys/values, no mask (every text position may
  look at every visual token), written with ``keras.ops``.
* ``GatedCrossAttention``: Flamingo's GATED XATTN-DENSE layer,
  ``y = x + tanh(a_attn) * Attn(LN(x), visual)``, then ``y + tanh(a_mlp) * MLP(LN(y))``, with both
  gates ``a`` initialised at 0: the layer starts as the identity, so the frozen language model
  starts exactly as it was pretrained.
* ``Resampler``: a Perceiver-style resampler, M learned latent queries that cross-attend to the
  visual features and hand the language model a fixed number M of visual tokens.
* ``Captioner``: a frozen ``genlib.transformer.GPT`` with a gated cross-attention layer before each
  of its blocks, reading the spatial feature map of a frozen ``genlib.multimodal.ImageEncoder``;
  trained with ``fit((images, input_ids), target_ids)`` on next-word cross-entropy over the
  caption; ``generate(n, images=...)`` writes captions (greedy or sampled).
* ``caption_inputs``: (BOS + caption, caption) pairs from caption ids; ``pad_after_eos`` cuts
  sampled ids at their end-of-caption token.

Shapes: B batch, T text positions, D the language model's width, N visual tokens (feature-map
pixels, or M resampler latents), C feature channels, V vocabulary size.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.distributions import gumbel_noise
from genlib.transformer import GPT, choose_tokens


def attend(queries, keys, values, num_heads):
    """Multi-head attention without a mask: ``softmax(Q K^T / sqrt(d_head)) V`` per head, heads concatenated.

    queries (B, Tq, D), keys and values (B, Tk, D), already projected; ``num_heads`` H divides D.
    Returns (B, Tq, D) and the weights (B, H, Tq, Tk).
    """
    width = queries.shape[-1]
    head = width // num_heads

    def split(x):  # (B, T, D) -> (B, H, T, D/H)
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], num_heads, head))
        return ops.transpose(x, (0, 2, 1, 3))

    q, k, v = split(queries), split(keys), split(values)
    weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(head), axis=-1)
    mixed = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
    return ops.reshape(mixed, (ops.shape(mixed)[0], ops.shape(mixed)[1], width)), weights


def _check_heads(num_heads, width):
    if width % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the width {width}.")


@keras.saving.register_keras_serializable(package="genlib")
class GatedCrossAttention(keras.layers.Layer):
    """Flamingo's gated cross-attention dense layer: text positions read visual tokens, through tanh gates.

    ``y = x + tanh(a_attn) * W_o Attn(W_q LN(x), W_k c, W_v c)`` and
    ``out = y + tanh(a_mlp) * MLP(LN(y))``, where ``c`` are the visual tokens. Both gates start at
    ``a = 0``, so ``tanh(a) = 0`` and the layer returns ``x`` exactly: inserted into a pretrained
    language model, it changes nothing until training opens the gates.

    Args:
        num_heads: attention heads H (must divide the width D).
        mlp_ratio: hidden width of the MLP as a multiple of D.

    Calls: ``(x (B, T, D), visual (B, N, D))`` -> (B, T, D); ``return_attention=True`` also returns
    the weights (B, H, T, N).
    """

    def __init__(self, num_heads: int = 4, mlp_ratio: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.mlp_ratio = positive_int("num_heads", num_heads), positive_int("mlp_ratio", mlp_ratio)
        self.norm_attention = keras.layers.LayerNormalization(epsilon=1e-5)
        self.norm_mlp = keras.layers.LayerNormalization(epsilon=1e-5)

    def build(self, input_shape, visual_shape=None):
        width = input_shape[-1]
        _check_heads(self.num_heads, width)
        if visual_shape is not None and visual_shape[-1] != width:
            raise ValueError(f"visual tokens must have the text width {width}, got shape {tuple(visual_shape)}.")
        self.width = width
        glorot = "glorot_uniform"
        self.w_q, self.w_k, self.w_v, self.w_o = (self.add_weight(shape=(width, width), initializer=glorot, name=n)
                                                  for n in ("w_q", "w_k", "w_v", "w_o"))
        self.mlp_in = keras.layers.Dense(self.mlp_ratio * width, activation="gelu", name="mlp_in")
        self.mlp_out = keras.layers.Dense(width, name="mlp_out")
        self.norm_attention.build(input_shape)
        self.norm_mlp.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build((*input_shape[:-1], self.mlp_ratio * width))
        # The gates: tanh(0) = 0, so the layer starts as the identity.
        self.attention_gate = self.add_weight(shape=(), initializer="zeros", name="attention_gate")
        self.mlp_gate = self.add_weight(shape=(), initializer="zeros", name="mlp_gate")

    def call(self, x, visual, return_attention=False):
        if len(visual.shape) != 3 or visual.shape[-1] != self.width:
            raise ValueError(f"visual must be (batch, tokens, width={self.width}), got shape {tuple(visual.shape)}.")
        h = self.norm_attention(x)
        attended, weights = attend(ops.matmul(h, self.w_q), ops.matmul(visual, self.w_k), ops.matmul(visual, self.w_v),
                                   self.num_heads)
        y = x + ops.tanh(self.attention_gate) * ops.matmul(attended, self.w_o)
        out = y + ops.tanh(self.mlp_gate) * self.mlp_out(self.mlp_in(self.norm_mlp(y)))
        return (out, weights) if return_attention else out

    def compute_output_shape(self, input_shape, visual_shape=None):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}


@keras.saving.register_keras_serializable(package="genlib")
class Resampler(keras.layers.Layer):
    """Perceiver-style resampler: M learned latent queries read a variable number of visual tokens.

    Each layer: ``z = z + Attn(LN(z), LN([c; z]))``, then ``z = z + MLP(LN(z))``, where ``z`` are
    the latents and ``c`` the visual tokens (the latents attend to the features and to themselves,
    as in Flamingo). However many tokens the image gives, the language model sees M.

    Args:
        num_latents: M.
        num_heads: attention heads (must divide the width).
        depth: layers.

    Shapes: (B, N, D) -> (B, M, D).
    """

    def __init__(self, num_latents: int = 8, num_heads: int = 4, depth: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_latents = positive_int("num_latents", num_latents)
        self.num_heads = positive_int("num_heads", num_heads)
        self.depth = positive_int("depth", depth)

    def build(self, input_shape):
        width = input_shape[-1]
        _check_heads(self.num_heads, width)
        self.width = width
        self.latents = self.add_weight(shape=(self.num_latents, width), name="latents",
                                       initializer=keras.initializers.RandomNormal(stddev=0.02))
        # Per layer: 3 norms (features, latents, MLP), 4 projections (q, k, v, out), 2 MLP layers.
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}_{j}")
                      for i in range(self.depth) for j in range(3)]
        self.projections = [keras.layers.Dense(width, use_bias=False, name=f"w_{n}{i}")
                            for i in range(self.depth) for n in "qkvo"]
        self.mlp = [layer for i in range(self.depth)
                    for layer in (keras.layers.Dense(2 * width, activation="gelu", name=f"mlp_in{i}"),
                                  keras.layers.Dense(width, name=f"mlp_out{i}"))]
        for layer in self.norms + self.projections + self.mlp[::2]:
            layer.build((None, None, width))
        for layer in self.mlp[1::2]:
            layer.build((None, None, 2 * width))

    def call(self, visual):
        z = ops.repeat(ops.expand_dims(self.latents, 0), ops.shape(visual)[0], axis=0)
        for i in range(self.depth):
            norm_c, norm_z, norm_mlp = self.norms[3 * i: 3 * i + 3]
            w_q, w_k, w_v, w_o = self.projections[4 * i: 4 * i + 4]
            mlp_in, mlp_out = self.mlp[2 * i: 2 * i + 2]
            context = ops.concatenate([norm_c(visual), norm_z(z)], axis=1)
            attended, _ = attend(w_q(norm_z(z)), w_k(context), w_v(context), self.num_heads)
            z = z + w_o(attended)
            z = z + mlp_out(mlp_in(norm_mlp(z)))
        return z

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_latents, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_latents": self.num_latents, "num_heads": self.num_heads,
                "depth": self.depth}


def caption_inputs(caption_ids, bos_id: int = 0):
    """Teacher forcing pairs from caption ids (N, L) (words, EOS, padding): ``(BOS + ids[:, :-1], ids)``.

    Position t of the input holds the word before target t, so the model predicts every word of the
    caption, and its EOS, from the words before it. Returns two int32 arrays (N, L).
    """
    ids = np.asarray(caption_ids, "int32")
    if ids.ndim != 2:
        raise ValueError(f"caption_ids must be (N, L) ints, got shape {ids.shape}.")
    return np.concatenate([np.full((len(ids), 1), bos_id, "int32"), ids[:, :-1]], axis=1), ids


def pad_after_eos(ids, eos_id: int = 1, pad_id: int = 0) -> np.ndarray:
    """A copy of token ids (N, T) with everything after each row's first ``eos_id`` set to ``pad_id``."""
    ids = np.array(ids, dtype="int32")
    if ids.ndim != 2:
        raise ValueError(f"ids must be (N, T) ints, got shape {ids.shape}.")
    is_eos = ids == eos_id
    ids[np.cumsum(is_eos, axis=1) - is_eos > 0] = pad_id  # an EOS strictly before this position
    return ids


@keras.saving.register_keras_serializable(package="genlib")
class Captioner(keras.Model):
    """A frozen GPT that reads a frozen image encoder's features through gated cross-attention layers.

    The image encoder's convolutions (``image_encoder.convs``) give a feature map (B, h, w, C); its
    h*w pixels, projected to the language model's width D with a learned position vector each (and
    optionally resampled to ``num_latents`` tokens), are the visual tokens. One
    ``GatedCrossAttention`` layer sits before every ``every``-th block of the language model. Only the
    projection, the resampler and the cross-attention layers train; the language model and the
    image encoder are frozen (``trainable = False``, set here on the objects passed in).

    Args:
        language_model: a built ``genlib.transformer.GPT`` (pretrained on captions).
        image_encoder: a built ``genlib.multimodal.ImageEncoder`` (e.g. a dual encoder's ``image_encoder``).
        image_shape: (H, W, C) of the images.
        num_heads: heads of the cross-attention layers.
        every: insert a cross-attention layer before blocks 0, every, 2 every, ...
        num_latents: M resampler latents, or None to hand the language model every feature-map pixel.
        pad_id: target id that the loss ignores (padding after the caption's EOS).

    Calls: ``(images (B, H, W, C), ids (B, T))`` -> logits (B, T, V); logits[:, t] predict ids[:, t + 1]
    (with ``caption_inputs``: the t-th caption token). Tracked metrics: ``loss`` (nats per caption
    token), ``accuracy`` (next-token accuracy over caption tokens).
    """

    def __init__(self, language_model, image_encoder, image_shape=(16, 16, 1), num_heads: int = 4, every: int = 1,
                 num_latents=None, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(language_model, GPT):
            raise ValueError(f"language_model must be a genlib GPT, got {type(language_model).__name__}.")
        if not hasattr(image_encoder, "convs"):
            raise ValueError("image_encoder must be a genlib.multimodal.ImageEncoder (it needs .convs, "
                             f"its convolutions), got {type(image_encoder).__name__}.")
        self.language_model, self.image_encoder = language_model, image_encoder
        self.image_shape = _util.shape("image_shape (H, W, C)", image_shape, rank=3)
        self.num_heads, self.every = positive_int("num_heads", num_heads), positive_int("every", every)
        self.num_latents = _util.optional_positive_int("num_latents", num_latents)
        self.pad_id = int(pad_id)
        width = language_model.width
        _check_heads(self.num_heads, width)
        # Frozen: the optimizer never sees them.
        self.language_model.trainable = False
        self.image_encoder.trainable = False
        self.cross_blocks = tuple(range(0, language_model.depth, self.every))
        self.cross_layers = [GatedCrossAttention(self.num_heads, name=f"cross_attention_{i}")
                             for i in self.cross_blocks]
        self.visual_projection = keras.layers.Dense(width, name="visual_projection")
        self.visual_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="visual_norm")
        self.resampler = None if self.num_latents is None else Resampler(self.num_latents, self.num_heads,
                                                                         name="resampler")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self._steps = None

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def feature_shape(self):
        """(h, w, C) of the image encoder's last feature map for ``image_shape`` images."""
        shape = (None, *self.image_shape)
        for conv in self.image_encoder.convs:
            shape = conv.compute_output_shape(shape)
        return tuple(shape[1:])

    def build(self, input_shape=None):
        lm, width = self.language_model, self.language_model.width
        if not self.image_encoder.built:
            self.image_encoder.build((None, *self.image_shape))
        if not lm.built:
            lm.build((None, lm.max_length))
        h, w, c = self.feature_shape()
        self.visual_projection.build((None, h * w, c))
        self.visual_positions = self.add_weight(shape=(h * w, width), name="visual_positions",
                                                initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.visual_norm.build((None, h * w, width))
        if self.resampler is not None:
            self.resampler.build((None, h * w, width))
        for layer in self.cross_layers:
            layer.build((None, None, width))
        self.built = True

    def visual_tokens(self, images):
        """Images (B, H, W, C) -> visual tokens (B, N, D): frozen conv features, projected (and resampled)."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be (batch, {', '.join(map(str, self.image_shape))}), "
                             f"got shape {tuple(images.shape)}.")
        x = ops.convert_to_tensor(images, "float32")
        for conv in self.image_encoder.convs:
            x = conv(x)
        x = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))  # (B, h*w, C): one token per feature pixel
        tokens = self.visual_norm(self.visual_projection(x) + self.visual_positions)
        return tokens if self.resampler is None else self.resampler(tokens)

    def text_logits(self, visual, ids, return_attention=False):
        """Logits (B, T, V) of the frozen GPT on ``ids`` (B, T), with visual tokens (B, N, D) read in.

        The same steps as ``GPT.call``, with a gated cross-attention layer before the chosen blocks.
        ``return_attention=True`` also returns {block index: cross-attention weights (B, H, T, N)}.
        """
        lm = self.language_model
        lm._check_ids(ids)
        x = lm.embedding(ops.cast(ids, "int32"))
        maps, cross = {}, dict(zip(self.cross_blocks, self.cross_layers))
        for i, block in enumerate(lm.blocks):
            if i in cross:
                x, maps[i] = cross[i](x, visual, return_attention=True)
            x = block(x)
        logits = lm.head(lm.final_norm(x))
        return (logits, maps) if return_attention else logits

    def call(self, inputs, training=None):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError("Captioner expects inputs (images, token_ids).")
        images, ids = inputs
        return self.text_logits(self.visual_tokens(images), ids)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean cross-entropy (nats) over caption tokens: targets ``y`` equal to ``pad_id`` are ignored."""
        if y_pred is None:
            y_pred = self(x, training=training)
        y = ops.cast(y, "int32")
        mask = ops.cast(ops.not_equal(y, self.pad_id), "float32")
        nll = keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True)
        count = ops.maximum(ops.sum(mask), 1.0)
        loss = ops.sum(nll * mask) / count
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y), "float32")
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(ops.sum(hits * mask) / count)
        return loss

    def gates(self) -> dict:
        """{block index: (tanh(a_attn), tanh(a_mlp))}: how far each layer has opened (0: closed)."""
        def opened(gate):
            return float(np.tanh(ops.convert_to_numpy(gate)))

        return {i: (opened(layer.attention_gate), opened(layer.mlp_gate))
                for i, layer in zip(self.cross_blocks, self.cross_layers)}

    # -- captioning ---------------------------------------------------------------------

    def _step_fn(self, visual, window, position, noise, temperature, top_k):
        logits = self.text_logits(visual, window)
        return choose_tokens(ops.take(logits, position, axis=1), noise, temperature, top_k)

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 256, progress=None, images=None,
                 length=None, temperature: float = 0.0, top_k=None, bos_id: int = 0, eos_id: int = 1) -> np.ndarray:
        """Captions for ``images``: token ids (n, length), each the words, then ``eos_id``, then ``pad_id``.

        Args:
            n: number of captions (= ``len(images)``; may be left out).
            seed: seeds the sampling noise (unused when greedy).
            batch_size: images captioned side by side.
            progress: show a progress bar over the tokens (None: except under the smoke profile).
            images: (n, H, W, C) images in the encoder's value range.
            length: most tokens per caption (None: the language model's ``max_length``).
            temperature: 0 (the default) is greedy decoding, 1 samples the model's distribution.
            top_k: sample only among the k most likely words (None: all).
            bos_id, eos_id: the start token fed first, and the token that ends a caption.

        The output has the layout of ``WordVocab.encode``, so ``vocab.decode`` reads it directly.
        """
        if images is None:
            raise ValueError("generate needs images=(n, H, W, C): the captioner describes images.")
        images = np.asarray(images, "float32")
        n = len(images) if n is None else positive_int("n", n)
        if len(images) != n:
            raise ValueError(f"need n={n} images, got {len(images)}.")
        batch_size = positive_int("batch_size", batch_size)
        L = self.language_model.max_length
        length = L if length is None else positive_int("length", length)
        if length > L:
            raise ValueError(f"length={length} is longer than the language model's max_length={L}.")
        temperature = _util.number("temperature", temperature, low=0.0)
        top_k = _util.optional_positive_int("top_k", top_k) or 0
        if not self.built:
            self.build()
        if self._steps is None:
            self._steps = (_util.compile_step(self.visual_tokens, state=self.variables),
                           _util.compile_step(self._step_fn, state=self.variables))
        visual_fn, step_fn = self._steps
        vocab = self.language_model.vocab_size
        noise = gumbel_noise((length, n, vocab), seed=keras.random.SeedGenerator(0 if seed is None else seed))
        noise = ops.convert_to_numpy(noise)
        tensor = ops.convert_to_tensor
        args = (tensor(temperature, "float32"), tensor(top_k, "int32"))
        out = np.full((n, length), self.pad_id, "int32")
        with _util.Progress(n * length, enabled=progress, unit="token", label="captioning") as bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                visual = visual_fn(tensor(images[start:stop]))
                window = np.zeros((stop - start, L), "int32")
                window[:, 0] = bos_id
                for t in range(length):
                    token = ops.convert_to_numpy(step_fn(visual, tensor(window), tensor(t, "int32"),
                                                         tensor(noise[t, start:stop]), *args))
                    out[start:stop, t] = token
                    if t + 1 < L:
                        window[:, t + 1] = token
                    bar.update(start * length + (t + 1) * (stop - start))
        return pad_after_eos(out, eos_id, self.pad_id)

    def get_config(self):
        return {**super().get_config(),
                "language_model": keras.saving.serialize_keras_object(self.language_model),
                "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
                "image_shape": list(self.image_shape), "num_heads": self.num_heads, "every": self.every,
                "num_latents": self.num_latents, "pad_id": self.pad_id}

    @classmethod
    def from_config(cls, config):
        return cls(**_util.deserialize(config, "language_model", "image_encoder"))
