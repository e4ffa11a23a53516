"""Two modalities in one space: a CLIP-style dual encoder, zero-shot classification, text-to-image.

Chapter 12 (chapters/12_multimodal.ipynb).

* ``TextEncoder``: word ids -> one vector per caption, a small transformer (genlib.transformer
  blocks) read out at the end-of-caption token; ``TextEncoder.tokens`` gives the per-token
  outputs and their padding mask instead (what cross-attention reads).
* ``ImageEncoder``: a small strided CNN, image -> one vector.
* ``DualEncoder``: both encoders with linear projections into a shared space of unit vectors,
  trained with ``fit`` on the symmetric contrastive (InfoNCE) loss with a learnable temperature.
* ``similarity_logits``, ``info_nce``: the loss written out (the tests compare it with a direct sum).
* ``zero_shot_classify``, ``recall_at_k``: using the trained space without retraining.
* Text-to-image: ``genlib.diffusion.DiffusionModel`` or ``genlib.flow_matching.FlowMatchingModel``
  with ``condition_dim`` set takes the frozen (pooled) text embeddings as condition vectors; with
  ``context_dim`` it reads the frozen per-token features (``embed_tokens``) by cross-attention, and
  ``genlib.latent.LatentGenerator`` runs either in an autoencoder's latent space. ``text_to_image``
  calls ``generate`` with classifier-free guidance; ``genlib.metrics.clip_score`` measures how well
  an image matches its prompt.

Shapes: B batch, L caption length (tokens), D_model encoder width, D shared embedding size.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.transformer import TokenAndPositionEmbedding, TransformerBlock


@keras.saving.register_keras_serializable(package="genlib")
class TextEncoder(keras.layers.Layer):
    """Word ids (B, L) -> caption vectors (B, width): embeddings, causal transformer blocks, EOS read-out.

    As in CLIP, attention is causal and the caption's vector is the last block's output at its
    end-of-caption token (the first ``eos_id``): with a causal mask that position has seen every
    word, and no position ever sees the padding after it.

    Args:
        vocab_size: number of token ids (padding 0 and EOS 1 included).
        max_length: longest caption L in tokens (EOS included).
        width: model width D_model.
        depth: transformer blocks.
        num_heads: attention heads (must divide width).
        eos_id: id of the end-of-caption token.

    Shapes: (B, L) int -> (B, width).
    """

    def __init__(self, vocab_size: int, max_length: int = 12, width: int = 64, depth: int = 1, num_heads: int = 4,
                 eos_id: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.max_length = positive_int("max_length", max_length)
        self.width, self.depth = positive_int("width", width), positive_int("depth", depth)
        self.num_heads, self.eos_id = positive_int("num_heads", num_heads), int(eos_id)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide width ({width}).")
        self.embedding = TokenAndPositionEmbedding(self.vocab_size, self.max_length, self.width, name="embedding")
        self.blocks = [TransformerBlock(self.num_heads, name=f"block{i}") for i in range(self.depth)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"TextEncoder expects token ids (batch, length), got shape {input_shape}.")
        seq = (input_shape[0], input_shape[1], self.width)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(seq)
        self.norm.build(seq)

    def call(self, ids, training=None):
        ids = ops.cast(ids, "int32")
        h = self._hidden(ids, training)
        # Position of the first EOS (argmax of a boolean row finds the first True).
        eos = ops.argmax(ops.cast(ops.equal(ids, self.eos_id), "int32"), axis=-1)
        return ops.sum(h * ops.expand_dims(ops.one_hot(eos, ops.shape(ids)[1]), -1), axis=1)

    def _hidden(self, ids, training=None):
        h = self.embedding(ids)
        for block in self.blocks:
            h = block(h, training=training)
        return self.norm(h)

    def tokens(self, ids, training=None):
        """Per-token features and their mask: ``(h (B, L, width), mask (B, L) bool)``.

        ``h`` is the last block's (normalised) output at every position, what Stable Diffusion's
        cross-attention reads from CLIP's text encoder. ``mask`` is True for the words and the
        first EOS, False for the padding after it: a padded position carries no information,
        and cross-attention must not read it.
        """
        ids = ops.cast(ids, "int32")
        is_eos = ops.cast(ops.equal(ids, self.eos_id), "int32")
        # EOS tokens strictly before each position: 0 up to and including the first EOS.
        before = ops.cumsum(is_eos, axis=-1) - is_eos
        return self._hidden(ids, training), ops.logical_and(ops.equal(before, 0), ops.not_equal(ids, 0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "width": self.width, "depth": self.depth, "num_heads": self.num_heads, "eos_id": self.eos_id}


@keras.saving.register_keras_serializable(package="genlib")
class ImageEncoder(keras.layers.Layer):
    """Images (B, H, W, C) -> vectors (B, width): strided 3×3 convolutions, then a dense layer.

    Args:
        filters: channels of the convolutions, each halving the resolution, e.g. (32, 64).
        width: output size.

    Shapes: (B, H, W, C) -> (B, width).
    """

    def __init__(self, filters=(32, 64), width: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(positive_int("filters entry", f) for f in filters)
        if not self.filters:
            raise ValueError("filters must name at least one convolution, got ().")
        self.width = positive_int("width", width)
        self.convs = [keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="gelu", name=f"conv{i}")
                      for i, f in enumerate(self.filters)]
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(self.width, activation="gelu", name="dense")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"ImageEncoder expects images (batch, H, W, C), got shape {input_shape}.")
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.dense.build((shape[0], math.prod(shape[1:])))

    def call(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.dense(self.flatten(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "width": self.width}


def l2_normalize(x, axis=-1, eps=1e-12):
    """``x / |x|`` along ``axis``: embeddings on the unit sphere, so dot products are cosines."""
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), eps))


def similarity_logits(image_embeddings, text_embeddings, logit_scale):
    """``s * u_i . v_j``: (B_images, B_texts) logits from unit-norm embeddings (B, D) and a scale s = 1/tau."""
    return logit_scale * ops.matmul(image_embeddings, ops.transpose(text_embeddings))


def info_nce(logits):
    """Symmetric InfoNCE of a square (B, B) logit matrix whose diagonal holds the matching pairs.

    ``(CE(rows) + CE(columns)) / 2`` with ``CE(rows) = -1/B sum_i log softmax_j(logits)[i, i]``:
    each image must pick its caption among the B captions, and each caption its image.
    """
    n = ops.shape(logits)[0]
    targets = ops.arange(n)
    rows = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    cols = keras.losses.sparse_categorical_crossentropy(targets, ops.transpose(logits), from_logits=True)
    return 0.5 * (ops.mean(rows) + ops.mean(cols))


@keras.saving.register_keras_serializable(package="genlib")
class DualEncoder(keras.Model):
    """CLIP in miniature: an image tower and a text tower meeting in one space of unit vectors.

    ``fit((images, token_ids))`` minimises ``info_nce`` of the batch's similarity matrix. The
    scale ``s = exp(log_scale)`` (the inverse temperature 1/tau) is learned, starting at
    1/0.07 and capped at 100 as in CLIP, so training cannot make the softmax arbitrarily sharp.

    Args:
        vocab_size, max_length: of the token ids.
        embed_dim: size D of the shared space.
        text_width, text_depth, num_heads: the text transformer.
        image_filters, image_width: the image CNN.
        init_temperature: tau at the start.

    Calls: ``(images (B, H, W, C), ids (B, L))`` -> ``(u (B, D), v (B, D))``, unit vectors.
    Tracked metrics: ``loss``, ``accuracy`` (fraction of images whose best caption in the batch is theirs).
    """

    def __init__(self, vocab_size: int, max_length: int = 12, embed_dim: int = 64, text_width: int = 64,
                 text_depth: int = 1, num_heads: int = 4, image_filters=(32, 64), image_width: int = 128,
                 init_temperature: float = 0.07, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.init_temperature = _util.number("init_temperature", init_temperature, 0.0, 1.0, low_open=True)
        self.text_encoder = TextEncoder(vocab_size, max_length, text_width, text_depth, num_heads, name="text_encoder")
        self.image_encoder = ImageEncoder(image_filters, image_width, name="image_encoder")
        self.text_projection = keras.layers.Dense(self.embed_dim, use_bias=False, name="text_projection")
        self.image_projection = keras.layers.Dense(self.embed_dim, use_bias=False, name="image_projection")
        self.log_scale = self.add_weight(shape=(), name="log_scale",
                                         initializer=keras.initializers.Constant(-math.log(self.init_temperature)))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    @property
    def logit_scale(self):
        """``s = exp(log_scale)``, capped at 100."""
        return ops.exp(ops.minimum(self.log_scale, math.log(100.0)))

    def encode_images(self, images):
        """Images (B, H, W, C) -> unit vectors (B, D)."""
        return l2_normalize(self.image_projection(self.image_encoder(images)))

    def encode_text(self, ids, training=None):
        """Token ids (B, L) -> unit vectors (B, D)."""
        return l2_normalize(self.text_projection(self.text_encoder(ids, training=training)))

    def encode_tokens(self, ids, training=None):
        """Token ids (B, L) -> per-token features (B, L, text_width) and mask (B, L): ``TextEncoder.tokens``."""
        return self.text_encoder.tokens(ids, training=training)

    def call(self, inputs, training=None):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError("DualEncoder expects inputs (images, token_ids).")
        images, ids = inputs
        return self.encode_images(images), self.encode_text(ids, training=training)

    def build(self, input_shape=None):
        if input_shape is not None:
            self.image_encoder.build(tuple(input_shape[0]))
            self.text_encoder.build(tuple(input_shape[1]))
            self.image_projection.build((None, self.image_encoder.width))
            self.text_projection.build((None, self.text_encoder.width))
        self.built = True

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        u, v = y_pred
        logits = similarity_logits(u, v, self.logit_scale)
        loss = info_nce(logits)
        self.loss_tracker.update_state(loss)
        hits = ops.equal(ops.argmax(logits, axis=1), ops.arange(ops.shape(logits)[0]))
        self.accuracy_tracker.update_state(ops.mean(ops.cast(hits, "float32")))
        return loss

    def get_config(self):
        te, ie = self.text_encoder, self.image_encoder
        return {**super().get_config(), "vocab_size": te.vocab_size, "max_length": te.max_length,
                "embed_dim": self.embed_dim, "text_width": te.width, "text_depth": te.depth,
                "num_heads": te.num_heads, "image_filters": list(ie.filters), "image_width": ie.width,
                "init_temperature": self.init_temperature}


# ---------------------------------------------------------------------------
# Using the shared space


def _embed(fn, x, batch_size):
    return np.concatenate([keras.ops.convert_to_numpy(fn(x[i: i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def embed_images(model: DualEncoder, images, batch_size: int = 500) -> np.ndarray:
    """Unit image embeddings (N, D) as NumPy, in batches."""
    return _embed(model.encode_images, np.asarray(images, "float32"), batch_size)


def embed_text(model: DualEncoder, ids, batch_size: int = 500) -> np.ndarray:
    """Unit caption embeddings (N, D) as NumPy, from token ids (N, L)."""
    return _embed(model.encode_text, np.asarray(ids, "int32"), batch_size)


def softmax_similarity(image_embeddings, text_embeddings, logit_scale: float) -> np.ndarray:
    """Row-softmax of ``s * U V^T``: for each image (row), a distribution over the texts. Shape (N_img, N_txt)."""
    logits = np.asarray(logit_scale, "float64") * np.asarray(image_embeddings, "float64") @ np.asarray(
        text_embeddings, "float64").T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def zero_shot_classify(model: DualEncoder, images, prompt_ids, batch_size: int = 500) -> np.ndarray:
    """Class of each image = the prompt (one per class, ids (K, L)) its embedding is closest to. Returns (N,).

    ``prompt_ids`` may also be (K, P, L): P prompts per class, whose unit embeddings are averaged
    and renormalised (prompt ensembling).
    """
    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim not in (2, 3):
        raise ValueError(f"prompt_ids must be (classes, L) or (classes, prompts, L), got shape {prompt_ids.shape}.")
    flat = prompt_ids.reshape(-1, prompt_ids.shape[-1])
    t = embed_text(model, flat, batch_size).reshape(*prompt_ids.shape[:-1], -1)
    if t.ndim == 3:
        t = t.mean(axis=1)
        t /= np.linalg.norm(t, axis=-1, keepdims=True)
    return np.argmax(embed_images(model, images, batch_size) @ t.T, axis=1)


def recall_at_k(similarity, k: int = 1) -> float:
    """Fraction of queries (rows) whose match (the same index) is among their k most similar items (columns).

    ``similarity``: (N, N) with query i matching item i.
    """
    s = np.asarray(similarity)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {s.shape}.")
    k = positive_int("k", k)
    # Rank of the match = number of items scored strictly higher (ties count in the query's favour).
    rank = (s > np.diag(s)[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def embed_tokens(model: DualEncoder, ids, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per-token text features (N, L, text_width) and their mask (N, L) bool, as NumPy, in batches.

    The context a cross-attention text-to-image model reads (``UNet(context_dim=text_width)``).
    """
    ids = np.asarray(ids, "int32")
    if ids.ndim != 2:
        raise ValueError(f"ids must be (N, L) token ids, got shape {ids.shape}.")
    parts = [model.encode_tokens(ids[i: i + batch_size]) for i in range(0, len(ids), batch_size)]
    return (np.concatenate([keras.ops.convert_to_numpy(h) for h, _ in parts]),
            np.concatenate([keras.ops.convert_to_numpy(m) for _, m in parts]).astype(bool))


def text_to_image(diffusion_model, text_embeddings, guidance: float = 3.0, steps: int = 20, seed=None,
                  **generate_kwargs) -> np.ndarray:
    """Images for prompts: ``generate`` of a ``DiffusionModel(condition_dim=D)`` on (N, D) text embeddings.

    ``guidance`` w mixes the conditional and unconditional noise predictions,
    ``eps_null + w (eps_text - eps_null)`` (classifier-free guidance): w = 0 ignores the text, w = 1 is the
    conditional model. Ho & Salimans write ``(1 + w') eps_text - w' eps_null``, so their w' is this w - 1.
    Guidance sharpens towards ``p(x) p(c | x)^w`` but does not sample it exactly. Other keywords (``batch_size``,
    ``progress``, ...) go to ``generate``. Returns (N, H, W, C) in [-1, 1], NumPy.
    """
    if getattr(diffusion_model, "condition_dim", None) is None:
        raise ValueError("text_to_image needs a DiffusionModel built with condition_dim (the text embedding size).")
    text_embeddings = np.asarray(text_embeddings, "float32")
    return diffusion_model.generate(len(text_embeddings), labels=text_embeddings, guidance=guidance, steps=steps,
                                    seed=seed, **generate_kwargs)
