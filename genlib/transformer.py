"""A GPT from scratch: embeddings, causal self-attention, pre-norm blocks, a sampler.

Chapter 8 (chapters/08_transformer.ipynb); chapter 12 (chapters/12_multimodal.ipynb) reuses the
blocks in its text encoder. The pieces, in the order the chapter builds them:

* ``TokenAndPositionEmbedding``: token id -> vector, plus a learned vector per position.
* ``causal_attention_mask``: which keys each query may attend to (itself and earlier positions).
* ``CausalSelfAttention``: multi-head attention written with ``keras.ops`` (the mask and
  the softmax are in plain sight), with a key/value cache for generation.
* ``TransformerBlock``: pre-norm residual block, ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.
* ``GPT``: the stack, trained with ``fit`` on next-token cross-entropy; reports bits per
  character; ``attention_maps`` returns the attention weights for plotting; ``generate``
  samples token sequences (through a ``Sampler``).
  Optional hooks let another model steer a GPT (chapter 13, chapters/13_sentence_vae.ipynb):
  ``memory`` adds extra key/value slots that every position of every block may attend to, and
  ``offset`` adds a vector to every token's embedding. Without them the GPT is unchanged.
* ``choose_tokens``: one token per row by the Gumbel-max trick, with temperature and top-k.
* ``Sampler``: the generation loop, with or without the cache; both draw the same random
  numbers up front, so for one seed they produce the same tokens.
* ``CharWindows`` / ``sequential_windows``: random training windows and fixed
  validation windows cut from a long id sequence.

Shapes: B batch, T sequence length, L = ``max_length``, D width, H heads, D/H head width,
V vocabulary size.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.distributions import gumbel_max, gumbel_noise

NEG_INF = -1e9  # a finite "minus infinity": exp() underflows to 0 and no NaN appears


def causal_attention_mask(num_queries, num_keys, start=0):
    """Which keys each query may attend to: a boolean (num_queries, num_keys) array, True = may look.

    Query i sits at absolute position ``start + i`` and sees key j iff ``j <= start + i``: itself
    and the past, never the future. (Not to be confused with the PixelCNN's masked kernels.)
    """
    query_pos = ops.arange(num_queries) + start
    key_pos = ops.arange(num_keys)
    return ops.expand_dims(key_pos, 0) <= ops.expand_dims(query_pos, 1)


@keras.saving.register_keras_serializable(package="genlib")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus a learned position embedding.

    Args:
        vocab_size: number of distinct token ids V.
        max_length: the longest sequence L the model accepts (one position vector each).
        width: embedding width D.

    Shapes: ids (B, T) int, T <= L -> (B, T, D). ``start`` shifts the positions (for the cache).
    """

    def __init__(self, vocab_size, max_length, width, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.max_length = positive_int("max_length", max_length)
        self.width = positive_int("width", width)

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.token_table = self.add_weight(shape=(self.vocab_size, self.width), initializer=init, name="token_table")
        self.position_table = self.add_weight(shape=(self.max_length, self.width), initializer=init,
                                              name="position_table")

    def call(self, ids, start=0):
        length = ids.shape[1]
        if length is not None and length > self.max_length:
            raise ValueError(f"sequence length {length} is longer than max_length={self.max_length}; "
                             "crop the context to the last max_length tokens.")
        positions = ops.arange(ops.shape(ids)[1]) + start
        return ops.take(self.token_table, ids, axis=0) + ops.take(self.position_table, positions, axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.width)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "width": self.width}


@keras.saving.register_keras_serializable(package="genlib")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention where each position sees only itself and earlier ones.

    For each head, ``A = softmax(Q K^T / sqrt(d_head) + mask)`` and the output is ``A V``,
    with ``Q, K, V`` linear maps of the input and the heads concatenated and mixed by a
    last linear map.

    Args:
        num_heads: H; must divide the input width D.
        dropout: dropout rate on the attention weights while training.

    Shapes: (B, T, D) -> (B, T, D); with ``return_attention=True`` also the weights (B, H, T, T).
    """

    def __init__(self, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.dropout = positive_int("num_heads", num_heads), _util.fraction("dropout", dropout)
        self.attention_dropout = keras.layers.Dropout(self.dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {width}; "
                             f"choose a width that is a multiple of {self.num_heads}.")
        self.width, self.head_width = width, width // self.num_heads
        self.w_qkv = self.add_weight(shape=(width, 3 * width), initializer="glorot_uniform", name="w_qkv")
        self.b_qkv = self.add_weight(shape=(3 * width,), initializer="zeros", name="b_qkv")
        self.w_out = self.add_weight(shape=(width, width), initializer="glorot_uniform", name="w_out")
        self.b_out = self.add_weight(shape=(width,), initializer="zeros", name="b_out")

    def split_heads(self, x):
        """(B, T, D) -> (B, H, T, D/H)."""
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.num_heads, self.head_width))
        return ops.transpose(x, (0, 2, 1, 3))

    def queries_keys_values(self, x):
        """The three projections of x, each (B, H, T, D/H)."""
        q, k, v = ops.split(ops.matmul(x, self.w_qkv) + self.b_qkv, 3, axis=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def attend(self, q, k, v, mask, training=None):
        """Soft lookup: each query takes a softmax-weighted average of the values.

        q (B, H, Tq, D/H); k, v (B, H, Tk, D/H); mask (Tq, Tk) bool, True = may look.
        Returns the mixed output (B, Tq, D) and the weights (B, H, Tq, Tk).
        """
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(self.head_width)
        # Hidden keys get -inf before the softmax, so their weight is exactly 0 and every row
        # still sums to 1 over the keys it may see.
        scores = ops.where(mask, scores, NEG_INF)
        weights = ops.softmax(scores, axis=-1)
        mixed = ops.matmul(self.attention_dropout(weights, training=training), v)  # (B, H, Tq, D/H)
        mixed = ops.transpose(mixed, (0, 2, 1, 3))
        mixed = ops.reshape(mixed, (ops.shape(mixed)[0], ops.shape(mixed)[1], self.width))
        return ops.matmul(mixed, self.w_out) + self.b_out, weights

    def call(self, x, training=None, return_attention=False, memory=None):
        q, k, v = self.queries_keys_values(x)
        length = ops.shape(x)[1]
        mask = causal_attention_mask(length, length)
        if memory is not None:
            k, v, mask = self.prepend_memory(memory, k, v, mask)
        out, weights = self.attend(q, k, v, mask, training=training)
        return (out, weights) if return_attention else out

    def prepend_memory(self, memory, k, v, mask):
        """Put M memory slots in front of the keys and values; every query may look at all of them.

        memory (B, M, D) are hidden vectors, turned into keys and values by this layer's own
        projections, as if M extra tokens sat before the sequence (the way Optimus injects its
        latent code). k, v (B, H, T, D/H); mask (Tq, T). Returns keys and values (B, H, M + T, D/H)
        and the mask (Tq, M + T); attention weights then have M + T columns, memory first.
        """
        if len(memory.shape) != 3 or memory.shape[-1] != self.width:
            raise ValueError(f"memory must be (batch, slots, width={self.width}), got shape {tuple(memory.shape)}.")
        _, k_memory, v_memory = self.queries_keys_values(memory)
        visible = ops.ones((ops.shape(mask)[0], ops.shape(memory)[1]), dtype="bool")
        return (ops.concatenate([k_memory, k], axis=2), ops.concatenate([v_memory, v], axis=2),
                ops.concatenate([visible, mask], axis=1))

    def call_with_cache(self, x, k_cache, v_cache, start):
        """Attend from new positions start.. start+T-1 to everything cached up to them.

        x (B, T, D) are the new positions; k_cache, v_cache (B, H, L, D/H) hold earlier keys
        and values (entries after the new positions may hold anything: the mask hides them).
        Returns the output (B, T, D) and the caches with the new keys and values written in.
        """
        q, k, v = self.queries_keys_values(x)
        # Write the new keys/values at their positions: fixed-shape buffers, so a compiled
        # step function is traced once, not once per generated token.
        k_cache = ops.slice_update(k_cache, (0, 0, start, 0), k)
        v_cache = ops.slice_update(v_cache, (0, 0, start, 0), v)
        mask = causal_attention_mask(ops.shape(x)[1], ops.shape(k_cache)[2], start)
        out, _ = self.attend(q, k_cache, v_cache, mask)
        return out, k_cache, v_cache

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="genlib")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``.

    Normalising *before* each sublayer keeps the residual path an identity, which is what
    lets deep stacks train without a learning-rate warm-up dance.

    Args:
        num_heads: attention heads H (must divide the width).
        mlp_ratio: hidden width of the MLP as a multiple of D.
        dropout: dropout rate on attention weights and on each sublayer's output.

    Shapes: (B, T, D) -> (B, T, D).
    """

    attention_class = CausalSelfAttention  # a subclass may swap in another attention (same constructor)

    def __init__(self, num_heads, mlp_ratio=4, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.mlp_ratio = positive_int("num_heads", num_heads), positive_int("mlp_ratio", mlp_ratio)
        self.dropout = _util.fraction("dropout", dropout)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = self.attention_class(num_heads, dropout)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.residual_dropout = keras.layers.Dropout(self.dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        self.mlp_in = keras.layers.Dense(self.mlp_ratio * width, activation="gelu")
        self.mlp_out = keras.layers.Dense(width)
        self.norm1.build(input_shape)
        self.attention.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build((*input_shape[:-1], self.mlp_ratio * width))

    def mlp(self, x, training=None):
        return self.residual_dropout(self.mlp_out(self.mlp_in(x)), training=training)

    def call(self, x, training=None, return_attention=False, memory=None):
        # Memory slots are normalised like the residual stream they stand in for.
        memory = None if memory is None else self.norm1(memory)
        attended, weights = self.attention(self.norm1(x), training=training, return_attention=True, memory=memory)
        x = x + self.residual_dropout(attended, training=training)
        x = x + self.mlp(self.norm2(x), training=training)
        return (x, weights) if return_attention else x

    def call_with_cache(self, x, k_cache, v_cache, start):
        attended, k_cache, v_cache = self.attention.call_with_cache(self.norm1(x), k_cache, v_cache, start)
        x = x + attended
        return x + self.mlp(self.norm2(x)), k_cache, v_cache

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "dropout": self.dropout}


class NextTokenLoss:
    """The loss of a language model trained with ``fit(x, y)``, y = x shifted left by one: the mean
    next-token cross-entropy in nats (``loss``), tracked also in bits (``bits_per_char``).

    Mixed into ``GPT`` and ``recurrent.CharLSTM`` (before ``keras.Model``); the model calls
    ``_track_next_token_loss()`` in its ``__init__``.
    """

    def _track_next_token_loss(self):
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bpc_tracker = keras.metrics.Mean(name="bits_per_char")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        nll = ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True))
        self.loss_tracker.update_state(nll)
        self.bpc_tracker.update_state(nll / math.log(2.0))
        return nll

    @property
    def metrics(self):
        return [self.loss_tracker, self.bpc_tracker]


@keras.saving.register_keras_serializable(package="genlib")
class GPT(NextTokenLoss, keras.Model):
    """A decoder-only transformer over token ids, trained to predict the next token.

    Args:
        vocab_size: V.
        max_length: the longest context L.
        width: D, the model width (a multiple of ``num_heads``).
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate while training.

    Shapes: ids (B, T) int with T <= L -> logits (B, T, V); logits[:, t] predict ids[:, t + 1].
    ``call`` also takes two optional ways to condition the model (both off by default):
    ``memory`` (B, depth, M, D), M extra key/value slots per block that every position sees, and
    ``offset`` (B, D), a vector added to every token's embedding.
    Train with ``fit(x, y)`` where ``y`` is ``x`` shifted left by one; the loss is the mean
    cross-entropy in nats, ``bits_per_char`` the same in bits.
    """

    def __init__(self, vocab_size, max_length, width=128, depth=2, num_heads=4, mlp_ratio=4, dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.max_length = positive_int("max_length", max_length)
        self.width, self.depth = positive_int("width", width), positive_int("depth", depth)
        self.num_heads, self.mlp_ratio = positive_int("num_heads", num_heads), positive_int("mlp_ratio", mlp_ratio)
        self.dropout = _util.fraction("dropout", dropout)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads must divide width={width}, got {num_heads!r}.")
        self.embedding = TokenAndPositionEmbedding(self.vocab_size, self.max_length, self.width)
        self.embedding_dropout = keras.layers.Dropout(self.dropout)
        self.blocks = [TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout, name=f"block_{i}")
                       for i in range(self.depth)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.head = keras.layers.Dense(vocab_size, name="head")
        self._track_next_token_loss()
        self._samplers = {}  # one per use_cache, so generate compiles its steps once

    def build(self, input_shape=(None, None)):
        hidden = (*input_shape, self.width)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(hidden)
        self.final_norm.build(hidden)
        self.head.build(hidden)
        self.built = True

    def _check_ids(self, ids):
        if len(ids.shape) != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, length), got shape {tuple(ids.shape)}.")
        if ids.shape[1] is not None and ids.shape[1] > self.max_length:
            raise ValueError(f"context of {ids.shape[1]} tokens is longer than max_length={self.max_length}.")

    def call(self, ids, training=None, return_attention=False, memory=None, offset=None):
        self._check_ids(ids)
        x = self.embedding(ids)
        if offset is not None:
            if len(offset.shape) != 2 or offset.shape[-1] != self.width:
                raise ValueError(f"offset must be (batch, width={self.width}), got shape {tuple(offset.shape)}.")
            x = x + ops.expand_dims(offset, 1)
        if memory is not None and (len(memory.shape) != 4 or tuple(memory.shape[1:2]) != (self.depth,)
                                   or memory.shape[-1] != self.width):
            raise ValueError(f"memory must be (batch, depth={self.depth}, slots, width={self.width}), "
                             f"got shape {tuple(memory.shape)}.")
        x = self.embedding_dropout(x, training=training)
        maps = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, training=training, return_attention=True,
                               memory=None if memory is None else memory[:, i])
            maps.append(weights)
        logits = self.head(self.final_norm(x))
        return (logits, maps) if return_attention else logits

    def attention_maps(self, ids):
        """Attention weights of every block for ``ids`` (B, T): a NumPy array (depth, B, H, T, T)."""
        _, maps = self(ops.convert_to_tensor(ids, dtype="int32"), training=False, return_attention=True)
        return np.stack([ops.convert_to_numpy(m) for m in maps])

    # -- generation with a key/value cache -------------------------------------------------

    def empty_cache(self, batch_size):
        """Zero key and value caches, each (depth, B, H, L, D/H)."""
        shape = (self.depth, batch_size, self.num_heads, self.max_length, self.width // self.num_heads)
        return ops.zeros(shape), ops.zeros(shape)

    def call_with_cache(self, ids, k_cache, v_cache, start):
        """Logits for the new tokens ``ids`` (B, T) at positions start..start+T-1, and the updated caches."""
        x = self.embedding(ids, start=start)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.call_with_cache(x, k_cache[i], v_cache[i], start)
            new_k.append(k)
            new_v.append(v)
        return self.head(self.final_norm(x)), ops.stack(new_k), ops.stack(new_v)

    def generate(self, n: int, *, seed=None, batch_size: int = 64, progress=None, prompt=None, length=None,
                 temperature: float = 1.0, top_k=None, use_cache: bool = True) -> np.ndarray:
        """Sample ``n`` sequences of token ids: each is the prompt followed by ``length`` new tokens.

        Args:
            n: number of sequences.
            seed: int seed; the same seed gives the same tokens.
            batch_size: sequences sampled side by side.
            progress: show a progress bar over the tokens (None: except under the smoke profile).
            prompt: ids (P,) every sequence starts from, or (n, P), one prompt each; None: the one
                token 0 (for the book's character vocabulary, a line break).
            length: new tokens per sequence; None: ``max_length``.
            temperature, top_k: see ``Sampler.__call__``.
            use_cache: sample with the key/value cache (same tokens, faster).

        Returns int32 NumPy (n, P + length), ready for the vocabulary's ``decode``.
        """
        n, batch_size = positive_int("n", n), positive_int("batch_size", batch_size)
        length = self.max_length if length is None else positive_int("length", length)
        prompt = prompt_ids(prompt, n, self.vocab_size)
        if not self.built:
            self.build((None, self.max_length))
        if use_cache not in self._samplers:
            self._samplers[use_cache] = Sampler(self, use_cache=use_cache)
        sampler = self._samplers[use_cache]
        out = []
        with _util.Progress(n * length, enabled=progress, unit="token", label="sampling") as bar:
            for start in range(0, n, batch_size):
                out.append(sampler(prompt[start: start + batch_size], length, temperature=temperature, top_k=top_k,
                                   seed=None if seed is None else seed + start, progress=bar))
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "width": self.width, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "dropout": self.dropout}


def prompt_ids(prompt, n, vocab_size):
    """The prompt of ``generate`` as int32 ids (n, P), P >= 1, checked against the vocabulary.

    ``prompt``: ids (P,) that every sequence starts from, (n, P) one prompt each, or None: the one
    token 0. Shared by ``GPT.generate`` and ``recurrent.CharLSTM.generate``.
    """
    prompt = np.zeros((1,), "int32") if prompt is None else np.asarray(prompt)
    if prompt.size and not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}.")
    prompt = prompt.astype("int32")
    prompt = np.repeat(prompt[None], n, axis=0) if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or len(prompt) != n or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (P,) or (n={n}, P) ids with P >= 1, got shape {prompt.shape}.")
    if prompt.min() < 0 or prompt.max() >= vocab_size:
        raise ValueError(f"prompt ids must lie in [0, {vocab_size - 1}], got [{prompt.min()}, {prompt.max()}].")
    return prompt


def choose_tokens(logits, noise, temperature, top_k):
    """Sample one token per row with the Gumbel-max trick (``genlib.distributions.gumbel_max``).

    ``argmax(logits / T + g)`` with ``g`` standard Gumbel noise is a draw from
    ``softmax(logits / T)``; multiplying through by T gives ``argmax(logits + T g)``, which
    is also defined at T = 0 (greedy decoding). Top-k first sets every logit below the k-th
    largest to -inf (``top_k <= 0`` keeps all).

    logits, noise (B, V); temperature float scalar; top_k int scalar. Returns ids (B,) int32.
    """
    logits, noise = ops.convert_to_tensor(logits), ops.convert_to_tensor(noise, dtype=logits.dtype)
    temperature, top_k = ops.cast(temperature, logits.dtype), ops.cast(top_k, "int32")
    vocab = ops.shape(logits)[-1]
    k = ops.where(top_k > 0, ops.minimum(top_k, vocab), vocab)
    kth_largest = ops.take(ops.sort(logits, axis=-1), vocab - k, axis=-1)  # sort is ascending
    logits = ops.where(logits >= ops.expand_dims(kth_largest, -1), logits, NEG_INF)
    # Scale the noise rather than divide the logits, so that T = 0 stays defined.
    return gumbel_max(logits, noise=temperature * noise)


class Sampler:
    """Draw continuations from a ``GPT``, with or without the key/value cache.

    Both variants keep the same fixed (B, L) window of context: when it is full, the last
    L // 2 tokens become the new context (the cached variant refills its cache from them).
    The Gumbel noise for every step is drawn up front from one seeded ``SeedGenerator``,
    so the two variants give identical tokens for the same seed.

    Args:
        model: a built ``GPT``.
        use_cache: True: each step runs one new token through the model against cached keys
            and values (cost O(L) per token); False: each step reruns the whole window (O(L^2)).
    """

    def __init__(self, model, use_cache=True):
        if not isinstance(model, GPT):
            raise ValueError(f"Sampler needs a genlib GPT, got {type(model).__name__}.")
        if not model.built:
            raise ValueError("build the model first (call it once on a batch of ids).")
        self.model, self.use_cache = model, bool(use_cache)
        # Each step is compiled once; the model's weights are its state (read at every call).
        self._full_step = _util.compile_step(self._full_step_fn, state=model.variables)
        self._prefill = _util.compile_step(self._prefill_fn, state=model.variables)
        self._cached_step = _util.compile_step(self._cached_step_fn, state=model.variables)

    def _full_step_fn(self, window, length, noise, temperature, top_k):
        logits = self.model(window, training=False)  # (B, L, V); positions >= length are padding
        return choose_tokens(ops.take(logits, length - 1, axis=1), noise, temperature, top_k)

    def _prefill_fn(self, window, length, noise, temperature, top_k):
        k_cache, v_cache = self.model.empty_cache(ops.shape(window)[0])
        logits, k_cache, v_cache = self.model.call_with_cache(window, k_cache, v_cache, 0)
        return choose_tokens(ops.take(logits, length - 1, axis=1), noise, temperature, top_k), k_cache, v_cache

    def _cached_step_fn(self, token, position, k_cache, v_cache, noise, temperature, top_k):
        logits, k_cache, v_cache = self.model.call_with_cache(token[:, None], k_cache, v_cache, position)
        return choose_tokens(logits[:, 0], noise, temperature, top_k), k_cache, v_cache

    def __call__(self, prompt_ids, num_new_tokens, temperature=1.0, top_k=None, seed=0, progress=False):
        """Continue ``prompt_ids`` (B, P) or (P,) by ``num_new_tokens``; returns (B, P + n) int32 NumPy.

        Args:
            temperature: >= 0; 1 samples the model's distribution, < 1 sharpens it, 0 is greedy.
            top_k: sample only among the k most likely tokens (None: all).
            seed: seeds the noise; the same seed gives the same text with or without the cache.
            progress: show a progress bar (None: except under the smoke profile).
        """
        prompt = np.asarray(prompt_ids, dtype="int32")
        prompt = prompt[None] if prompt.ndim == 1 else prompt
        L, vocab = self.model.max_length, self.model.vocab_size
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt_ids must be (batch, length>=1) ints, got shape {prompt.shape}.")
        if prompt.shape[1] > L:
            raise ValueError(f"prompt of {prompt.shape[1]} tokens is longer than max_length={L}; crop it.")
        if prompt.min() < 0 or prompt.max() >= vocab:
            raise ValueError(f"prompt ids must lie in [0, {vocab - 1}].")
        temperature = _util.number("temperature", temperature, low=0.0)
        top_k = _util.optional_positive_int("top_k", top_k) or 0  # 0: keep every token
        num_new_tokens = positive_int("num_new_tokens", num_new_tokens, minimum=0)
        batch = len(prompt)
        # The compiled steps get tensors: converting NumPy arguments at every call would cost
        # more than a cached step itself.
        tensor = ops.convert_to_tensor
        temperature, top_k = tensor(temperature, "float32"), tensor(top_k, "int32")
        # Standard Gumbel noise, one (batch, V) row per step.
        noise = gumbel_noise((max(num_new_tokens, 1), batch, vocab), seed=keras.random.SeedGenerator(seed))
        window = np.zeros((batch, L), dtype="int32")
        window[:, : prompt.shape[1]] = prompt
        length, caches = prompt.shape[1], None
        out = [prompt]
        # generate() passes one bar for all its batches; otherwise the call has its own.
        bar = progress if isinstance(progress, _util.Progress) else _util.Progress(
            num_new_tokens * batch, enabled=progress, unit="token", label="sampling")
        done = bar.done
        for t in range(num_new_tokens):
            if length == L:  # window full: keep its last half as context
                window = np.concatenate([window[:, L - L // 2:], np.zeros((batch, L - L // 2), "int32")], axis=1)
                length, caches = L // 2, None
            args = (noise[t], temperature, top_k)
            if not self.use_cache:
                token = self._full_step(tensor(window), tensor(length, "int32"), *args)
            elif caches is None:
                token, *caches = self._prefill(tensor(window), tensor(length, "int32"), *args)
            else:
                token, *caches = self._cached_step(tensor(window[:, length - 1]), tensor(length - 1, "int32"),
                                                   *caches, *args)
            token = ops.convert_to_numpy(token)
            window[:, length] = token
            length += 1
            out.append(token[:, None])
            bar.update(done + (t + 1) * batch)
        if bar is not progress:
            bar.close()
        return np.concatenate(out, axis=1)


# -- data windows -----------------------------------------------------------------------------


def sequential_windows(ids, seq_len):
    """Non-overlapping (x, y) windows covering ``ids``: x (N, seq_len), y = x shifted by one."""
    ids = np.asarray(ids, dtype="int32")
    if ids.ndim != 1 or len(ids) < seq_len + 1:
        raise ValueError(f"need a 1-D id sequence longer than seq_len={seq_len}, got shape {ids.shape}.")
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    return x, y


class CharWindows(keras.utils.PyDataset):
    """Batches of random (x, y) windows from a long id sequence; new windows every epoch.

    Args:
        ids: 1-D int array (the training text as ids).
        seq_len: window length T.
        batch_size: windows per batch.
        num_batches: batches per epoch.
        seed: fixes which windows are drawn (batch i of epoch e is the same on every run).
    """

    def __init__(self, ids, seq_len, batch_size, num_batches, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.ids = np.asarray(ids, dtype="int32")
        if self.ids.ndim != 1 or len(self.ids) <= seq_len + 1:
            raise ValueError(f"need a 1-D id sequence longer than seq_len={seq_len}, got shape {self.ids.shape}.")
        self.seq_len, self.batch_size, self.batches_per_epoch, self.seed = seq_len, batch_size, num_batches, seed
        self.epoch = 0

    def __len__(self):
        return self.batches_per_epoch

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        starts = rng.integers(0, len(self.ids) - self.seq_len - 1, size=self.batch_size)
        rows = starts[:, None] + np.arange(self.seq_len + 1)
        windows = self.ids[rows]
        return windows[:, :-1], windows[:, 1:]

    def on_epoch_end(self):
        self.epoch += 1
