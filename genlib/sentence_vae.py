"""A sentence VAE on a pretrained GPT decoder, in the Optimus recipe (Li et al. 2020).

Chapter 13 (chapters/13_sentence_vae.ipynb). The pieces:

* ``BidirectionalSelfAttention`` / ``EncoderBlock``: the GPT's attention and block (``genlib.transformer``)
  with the causal mask replaced by a padding mask: every word sees every other word of its sentence.
* ``SentenceEncoder``: word ids -> ``(z_mean, z_log_var)``, a small bidirectional transformer whose
  outputs are averaged over the sentence's tokens (padding excluded) and mapped to the two heads.
* ``SentenceVAE``: the encoder, a pretrained ``genlib.transformer.GPT`` as decoder, and the latent
  code injected into the decoder either **as memory** (one extra key/value slot per block, the
  ``memory`` hook of ``GPT.call``) or **as an embedding** added to every token (the ``offset`` hook).
  Trained with ``fit`` on ``reconstruction + beta(step) * free_bits_kl``, with ``genlib.vae``'s
  ``gaussian_kl``, ``Sampling`` and beta schedules; ``generate`` decodes codes drawn from the prior.
* ``free_bits_kl``, ``active_units``: the KL penalty with a floor per unit, and Burda et al.'s count
  of the latent units the encoder uses.
* ``as_text``: token rows back to sentences.
* ``decoder_inputs``, ``token_nll``, ``language_model_nll``, ``language_model_features``: the
  shifted decoder inputs, per-sentence negative log-likelihoods (for the VAE and for the plain
  pretrained language model) and the language model's own sentence features (for the probe).

Token convention (``genlib.data.WordVocab``): id 0 pads, id 1 ends a sentence (EOS) and also starts
the decoder's input (BOS), as GPT-2's single ``<|endoftext|>`` token does.
Shapes: B batch, T tokens per sentence (padded), d latent size, D decoder width.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib.transformer import GPT, NEG_INF, CausalSelfAttention, TokenAndPositionEmbedding, TransformerBlock
from genlib.vae import ACTIVE_UNIT_THRESHOLD, BetaSchedule, ConstantBeta, Sampling, gaussian_kl

PAD, EOS = 0, 1
BOS = EOS  # the decoder's first input token
INJECTIONS = ("memory", "embedding")


# ---------------------------------------------------------------------------
# The KL term's pieces


def free_bits_kl(kl_per_unit, free_bits=0.0):
    """The KL penalty with free bits (Kingma et al. 2016): ``sum_j max(mean_batch KL_j, free_bits)``.

    kl_per_unit (B, d), e.g. from ``genlib.vae.gaussian_kl``; returns a scalar. A unit whose
    batch-mean KL is below ``free_bits`` nats costs a constant, so the gradient stops pushing it
    towards the prior: the optimiser may spend up to ``free_bits`` nats per unit on information
    for free. With ``free_bits=0`` it is the batch-mean KL of the whole code. (``genlib.vae.VAE``
    computes the same penalty inside its loss.)
    """
    free_bits = _util.number("free_bits", free_bits, low=0.0)
    return ops.sum(ops.maximum(ops.mean(kl_per_unit, axis=0), free_bits))


def active_units(z_mean, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent units the encoder uses (Burda et al. 2016): ``#{j : Var_x(E_q[z_j | x]) > threshold}``.

    z_mean (N, d): posterior means of N inputs (a whole held-out set, not one batch).
    """
    z_mean = np.asarray(z_mean, dtype="float64")
    if z_mean.ndim != 2 or len(z_mean) < 2:
        raise ValueError(f"z_mean must be (N >= 2, d) posterior means, got shape {z_mean.shape}.")
    threshold = _util.number("threshold", threshold, low=0.0)
    return int(np.sum(z_mean.var(axis=0) > threshold))


# ---------------------------------------------------------------------------
# Token plumbing


def _check_token_ids(ids, max_length=None, name="ids"):
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be a (batch, length) int array of token ids, got {ids.dtype} {ids.shape}.")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(f"{name} has {ids.shape[1]} tokens per sentence; the model takes at most {max_length}.")
    return ids.astype("int32")


def decoder_inputs(ids):
    """Teacher forcing: the decoder reads ``[BOS, w_1, ..., w_{T-1}]`` and predicts ``[w_1, ..., w_T]``.

    ids (B, T) sentences as ``WordVocab.encode`` makes them (words, EOS, padding) -> (B, T).
    """
    return ops.concatenate([ops.full((ops.shape(ids)[0], 1), BOS, dtype="int32"),
                            ops.cast(ids[:, :-1], "int32")], axis=1)


def token_nll(logits, ids):
    """Negative log-likelihood of each sentence in nats, summed over its words and its EOS.

    logits (B, T, V) from the decoder fed ``decoder_inputs(ids)``; ids (B, T). Padding after
    EOS is not scored: it is not part of the sentence. Returns (B,).
    """
    ids = ops.cast(ids, "int32")
    nll = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)  # (B, T)
    return ops.sum(nll * ops.cast(ids != PAD, nll.dtype), axis=1)


def _batched(fn, ids, batch_size):
    out = [ops.convert_to_numpy(fn(ops.convert_to_tensor(ids[i: i + batch_size])))
           for i in range(0, len(ids), batch_size)]
    return np.concatenate(out)


def language_model_nll(gpt: GPT, ids, batch_size: int = 500) -> np.ndarray:
    """Per-sentence NLL (nats) of sentences ``ids`` (N, T) under a plain GPT language model: NumPy (N,)."""
    ids = _check_token_ids(ids, gpt.max_length)
    batch_size = _util.positive_int("batch_size", batch_size)
    return _batched(lambda x: token_nll(gpt(decoder_inputs(x), training=False), x), ids, batch_size)


def language_model_features(gpt: GPT, ids, batch_size: int = 500) -> np.ndarray:
    """A GPT's own sentence vector: its final hidden states averaged over the sentence's tokens.

    The decoder reads ``decoder_inputs(ids)``; positions whose target is padding are left out.
    ids (N, T) -> NumPy (N, D). (The baseline for a linear probe on the VAE's posterior means.)
    """
    ids = _check_token_ids(ids, gpt.max_length)
    batch_size = _util.positive_int("batch_size", batch_size)

    def features(x):
        h = gpt.embedding(decoder_inputs(x))
        for block in gpt.blocks:
            h = block(h, training=False)
        h = gpt.final_norm(h)
        weight = ops.expand_dims(ops.cast(x != PAD, h.dtype), -1)
        return ops.sum(h * weight, axis=1) / ops.maximum(ops.sum(weight, axis=1), 1.0)

    return _batched(features, ids, batch_size)


def as_text(vocab, ids) -> list[str]:
    """Sentences ``ids`` (N, T) as strings, each cut at its first EOS (what a sampler wrote after it is
    not part of the sentence). ``vocab``: a ``genlib.data.WordVocab``."""
    out = []
    for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]):
        row = list(row)
        out.append(vocab.decode(row[: row.index(EOS)] if EOS in row else row))
    return out


def copy_gpt(gpt: GPT) -> GPT:
    """A new GPT with the same configuration and a copy of ``gpt``'s weights (to fine-tune one pretrained
    model in several ways)."""
    if not isinstance(gpt, GPT):
        raise ValueError(f"copy_gpt needs a genlib GPT, got {type(gpt).__name__}.")
    if not gpt.built:
        raise ValueError("build (or train) the GPT before copying it.")
    twin = GPT.from_config(gpt.get_config())
    twin.build((None, gpt.max_length))
    twin.set_weights(gpt.get_weights())
    return twin


# ---------------------------------------------------------------------------
# The encoder


@keras.saving.register_keras_serializable(package="genlib")
class BidirectionalSelfAttention(CausalSelfAttention):
    """The GPT's multi-head attention without the causal mask: each token sees the whole sentence.

    Only padding is hidden: ``padding_mask`` (B, T) bool, True for real tokens, removes the padded
    keys from every query's softmax. Shapes: (B, T, D) -> (B, T, D) (weights (B, H, T, T)).
    """

    def call(self, x, padding_mask=None, training=None, return_attention=False):
        q, k, v = self.queries_keys_values(x)
        length = ops.shape(x)[1]
        if padding_mask is None:
            mask = ops.ones((length, length), dtype="bool")
        else:
            mask = ops.cast(padding_mask, "bool")[:, None, None, :]  # (B, 1, 1, T): per sentence, per key
        out, weights = self.attend(q, k, v, mask, training=training)
        return (out, weights) if return_attention else out


@keras.saving.register_keras_serializable(package="genlib")
class EncoderBlock(TransformerBlock):
    """``genlib.transformer.TransformerBlock`` with bidirectional, padding-masked attention (a BERT-style block).

    Shapes: (B, T, D), padding_mask (B, T) bool -> (B, T, D).
    """

    attention_class = BidirectionalSelfAttention

    def call(self, x, padding_mask=None, training=None):
        x = x + self.residual_dropout(self.attention(self.norm1(x), padding_mask=padding_mask, training=training),
                                      training=training)
        return x + self.mlp(self.norm2(x), training=training)


@keras.saving.register_keras_serializable(package="genlib")
class SentenceEncoder(keras.layers.Layer):
    """Word ids -> the posterior ``q(z | sentence) = N(z_mean, diag(exp(z_log_var)))``.

    Token and position embeddings, ``depth`` bidirectional ``EncoderBlock``s, a final layer norm,
    the mean over the sentence's real tokens (padding excluded everywhere), then two linear heads.
    Positions make it order-aware: "a dark coat that is small" and a shuffle of its words differ.

    Args:
        vocab_size: V (padding id 0 included).
        max_length: the longest sentence T it reads.
        latent_dim: d, the size of z.
        width, depth, num_heads, mlp_ratio, dropout: as for ``genlib.transformer.GPT``.

    Shapes: ids (B, T) int -> [z_mean (B, d), z_log_var (B, d)].
    """

    def __init__(self, vocab_size, max_length, latent_dim=16, width=64, depth=2, num_heads=4, mlp_ratio=4,
                 dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = _util.positive_int("vocab_size", vocab_size)
        self.max_length = _util.positive_int("max_length", max_length)
        self.latent_dim = _util.positive_int("latent_dim", latent_dim)
        self.width, self.depth = _util.positive_int("width", width), _util.positive_int("depth", depth)
        self.num_heads, self.mlp_ratio = (_util.positive_int("num_heads", num_heads),
                                          _util.positive_int("mlp_ratio", mlp_ratio))
        self.dropout = _util.fraction("dropout", dropout)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads must divide width={width}, got {num_heads!r}.")
        self.embedding = TokenAndPositionEmbedding(self.vocab_size, self.max_length, self.width)
        self.blocks = [EncoderBlock(self.num_heads, self.mlp_ratio, self.dropout, name=f"encoder_block_{i}")
                       for i in range(self.depth)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.mean_head = keras.layers.Dense(self.latent_dim, name="z_mean")
        # Zero-initialised, as in genlib.vae: every code starts with the prior's unit variance.
        self.log_var_head = keras.layers.Dense(self.latent_dim, kernel_initializer="zeros", name="z_log_var")

    def build(self, input_shape):
        hidden = (input_shape[0], input_shape[1], self.width)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(hidden)
        self.final_norm.build(hidden)
        self.mean_head.build((input_shape[0], self.width))
        self.log_var_head.build((input_shape[0], self.width))
        self.built = True

    def call(self, ids, training=None):
        if len(ids.shape) != 2:
            raise ValueError(f"SentenceEncoder expects ids of shape (batch, length), got {tuple(ids.shape)}.")
        ids = ops.cast(ids, "int32")
        padding_mask = ids != PAD
        h = self.embedding(ids)
        for block in self.blocks:
            h = block(h, padding_mask=padding_mask, training=training)
        h = self.final_norm(h)
        weight = ops.expand_dims(ops.cast(padding_mask, h.dtype), -1)
        pooled = ops.sum(h * weight, axis=1) / ops.maximum(ops.sum(weight, axis=1), 1.0)
        return [self.mean_head(pooled), self.log_var_head(pooled)]

    def compute_output_shape(self, input_shape):
        return [(input_shape[0], self.latent_dim)] * 2

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "latent_dim": self.latent_dim, "width": self.width, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio, "dropout": self.dropout}


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class SentenceVAE(keras.Model):
    """A VAE over sentences: transformer encoder, pretrained GPT decoder, the code injected into the decoder.

    Loss per batch: ``mean_B[-log p(x | z)] + beta(step) * free_bits_kl(KL_per_unit, free_bits)``
    with ``z ~ q(z | x)`` (reparameterised), ``-log p(x | z)`` the decoder's NLL of the
    sentence's words and EOS in nats (``token_nll``), and the KL from ``genlib.vae.gaussian_kl``.

    Injection of z (d) into the decoder (Li et al. 2020 compare both):
        "memory": ``W_m z`` gives one hidden vector per block (no bias), which every position of
            that block attends to as an extra key/value slot (``GPT.call(memory=...)``).
        "embedding": ``W_e z`` (no bias) is added to every token's embedding (``GPT.call(offset=...)``),
            so a zero code leaves the decoder exactly the pretrained language model.

    Args:
        encoder: a ``SentenceEncoder``.
        decoder: a ``genlib.transformer.GPT`` (pretrained as a language model on the same sentences);
            its ``max_length`` and ``vocab_size`` must match the encoder's.
        injection: "memory" or "embedding".
        beta: a float (constant) or a ``genlib.vae.BetaSchedule`` of the training step.
        free_bits: nats per latent unit below which the KL costs nothing (0: the plain ELBO).
        seed: seed of the sampling layer and of the prior.

    Tracked metrics: ``loss``, ``reconstruction`` (nats per sentence), ``kl`` (nats per sentence),
    ``active_units`` (within the batch), ``beta``.
    """

    def __init__(self, encoder: SentenceEncoder, decoder: GPT, injection: str = "memory", beta=1.0,
                 free_bits: float = 0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, SentenceEncoder):
            raise ValueError(f"encoder must be a SentenceEncoder, got {type(encoder).__name__}.")
        if not isinstance(decoder, GPT):
            raise ValueError(f"decoder must be a genlib GPT, got {type(decoder).__name__}.")
        if (encoder.vocab_size, encoder.max_length) != (decoder.vocab_size, decoder.max_length):
            raise ValueError(f"encoder reads vocab_size={encoder.vocab_size}, max_length={encoder.max_length} but "
                             f"the decoder has vocab_size={decoder.vocab_size}, max_length={decoder.max_length}.")
        if not isinstance(beta, BetaSchedule):
            beta = ConstantBeta(beta)
        self.encoder, self.decoder = encoder, decoder
        self.injection = _util.choice("injection", injection, INJECTIONS)
        self.latent_dim, self.max_length = encoder.latent_dim, encoder.max_length
        self.beta_schedule, self.free_bits = beta, _util.number("free_bits", free_bits, low=0.0)
        self.seed = seed
        self.sampling = Sampling(seed=seed, name="sampling")
        out = decoder.depth * decoder.width if self.injection == "memory" else decoder.width
        # No bias: z = 0 gives a zero embedding offset (exactly the pretrained model) or zero memory.
        self.latent_projection = keras.layers.Dense(out, use_bias=False, name=f"latent_to_{self.injection}")
        self.step = self.add_weight(shape=(), dtype="int32", name="step", initializer="zeros", trainable=False,
                                    aggregation="only_first_replica")
        self.prior_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "reconstruction", "kl", "active_units", "beta")}
        self._decode_step = None  # compiled on first use by decode

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        shape = (None, self.max_length)
        if not self.encoder.built:
            self.encoder.build(shape)
        if not self.decoder.built:
            self.decoder.build(shape)
        self.latent_projection.build((None, self.latent_dim))
        self.built = True

    def _check_ids(self, ids):
        if len(ids.shape) != 2 or (ids.shape[1] is not None and ids.shape[1] > self.max_length):
            raise ValueError(f"expected token ids (batch, length <= {self.max_length}), got {tuple(ids.shape)}.")

    def decoder_logits(self, z, inputs, training=None):
        """The decoder's logits (B, T, V) for ``inputs`` (B, T) given codes z (B, d)."""
        projected = self.latent_projection(z)
        if self.injection == "memory":
            memory = ops.reshape(projected, (-1, self.decoder.depth, 1, self.decoder.width))
            return self.decoder(inputs, training=training, memory=memory)
        return self.decoder(inputs, training=training, offset=projected)

    def call(self, ids, training=False):
        """Encode, sample z, decode with teacher forcing. Returns a dict: ``logits`` (B, T, V), ``z``,
        ``z_mean``, ``z_log_var`` (B, d)."""
        self._check_ids(ids)
        ids = ops.cast(ids, "int32")
        z_mean, z_log_var = self.encoder(ids, training=training)
        z = self.sampling([z_mean, z_log_var])
        logits = self.decoder_logits(z, decoder_inputs(ids), training=training)
        return {"logits": logits, "z": z, "z_mean": z_mean, "z_log_var": z_log_var}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x = ops.cast(ops.convert_to_tensor(x), "int32")
        if y_pred is None:
            y_pred = self(x, training=training)
        reconstruction = token_nll(y_pred["logits"], x)  # (B,) nats per sentence
        kl_per_unit = gaussian_kl(y_pred["z_mean"], y_pred["z_log_var"])  # (B, d)
        beta = self.beta_schedule(self.step)
        if training:
            self.step.assign_add(1)
        loss = ops.mean(reconstruction) + beta * free_bits_kl(kl_per_unit, self.free_bits)
        active = ops.sum(ops.cast(ops.var(y_pred["z_mean"], axis=0) > ACTIVE_UNIT_THRESHOLD, "float32"))
        for name, value in (("loss", loss), ("reconstruction", ops.mean(reconstruction)),
                            ("kl", ops.mean(ops.sum(kl_per_unit, axis=-1))), ("active_units", active),
                            ("beta", beta)):
            self.trackers[name].update_state(value)
        return loss

    # -- what the chapter calls --------------------------------------------------

    def encode(self, ids, batch_size: int = 500):
        """Posterior parameters of sentences ``ids`` (N, T): NumPy ``(z_mean, z_log_var)``, each (N, d)."""
        ids = _check_token_ids(ids, self.max_length)
        batch_size = _util.positive_int("batch_size", batch_size)
        parts = [self.encoder(ops.convert_to_tensor(ids[i: i + batch_size]), training=False)
                 for i in range(0, len(ids), batch_size)]
        return tuple(np.concatenate([ops.convert_to_numpy(p[j]) for p in parts]) for j in range(2))

    def nll(self, ids, z, batch_size: int = 500) -> np.ndarray:
        """``-log p(ids | z)`` in nats per sentence: ids (N, T), z (N, d) -> NumPy (N,)."""
        ids = _check_token_ids(ids, self.max_length)
        z = np.asarray(z, dtype="float32")
        if z.shape != (len(ids), self.latent_dim):
            raise ValueError(f"z must be ({len(ids)}, {self.latent_dim}), got {z.shape}.")
        batch_size = _util.positive_int("batch_size", batch_size)
        out = []
        for i in range(0, len(ids), batch_size):
            x = ops.convert_to_tensor(ids[i: i + batch_size])
            logits = self.decoder_logits(ops.convert_to_tensor(z[i: i + batch_size]), decoder_inputs(x),
                                         training=False)
            out.append(ops.convert_to_numpy(token_nll(logits, x)))
        return np.concatenate(out)

    def decode(self, z, *, temperature: float = 0.0, seed=None, batch_size: int = 500) -> np.ndarray:
        """Sentences from codes z (N, d), one token at a time: int32 NumPy (N, max_length).

        ``temperature=0`` is greedy (the most likely word each step); > 0 samples. The output
        follows ``WordVocab``: words, EOS, then padding (a sentence that never emits EOS fills the row).
        """
        z = np.asarray(z, dtype="float32")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, latent_dim={self.latent_dim}), got shape {z.shape}.")
        temperature = _util.number("temperature", temperature, low=0.0)
        batch_size = _util.positive_int("batch_size", batch_size)
        rng = np.random.default_rng(seed)
        if self._decode_step is None:
            # One compiled forward pass per token: the loop below calls it max_length times per batch.
            self._decode_step = _util.compile_step(self._next_logits, state=self.variables)
        out = []
        for i in range(0, len(z), batch_size):
            zb = ops.convert_to_tensor(z[i: i + batch_size])
            n, T = len(z[i: i + batch_size]), self.max_length
            tokens = np.zeros((n, T), "int32")
            done = np.zeros(n, bool)
            for t in range(T):
                logits = ops.convert_to_numpy(self._decode_step(zb, ops.convert_to_tensor(tokens),
                                                                ops.convert_to_tensor(t, "int32")))
                logits[:, PAD] = NEG_INF  # padding is never a word: a sentence ends with EOS
                if temperature == 0:
                    token = logits.argmax(-1)
                else:
                    token = (logits / temperature + rng.gumbel(size=logits.shape)).argmax(-1)
                tokens[:, t] = np.where(done, PAD, token)
                done |= token == EOS
            out.append(tokens)
        return np.concatenate(out)

    def _next_logits(self, z, tokens, position):
        # Logits (B, V) for the token at ``position`` of ``tokens`` (B, T), given codes z (B, d).
        logits = self.decoder_logits(z, decoder_inputs(tokens), training=False)
        return ops.take(logits, position, axis=1)

    def reconstruct(self, ids, **options) -> np.ndarray:
        """Greedy decoding of each sentence's posterior mean: ids (N, T) -> (N, max_length)."""
        return self.decode(self.encode(ids)[0], **options)

    def generate(self, n: int, *, seed=None, batch_size: int = 500, progress: bool | None = False,
                 temperature: float = 0.0) -> np.ndarray:
        """Sentences decoded from ``z ~ N(0, I)``: int32 NumPy (n, max_length), for ``WordVocab.decode``.

        Args:
            n: number of sentences.
            seed: int (the same seed gives the same sentences), or None: the model's prior seed generator.
            batch_size: codes decoded at once.
            progress: a progress bar over sentences (None: shown except under the smoke profile).
            temperature: 0 decodes each code greedily; > 0 also samples the words.
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        seed_generator = self.prior_seed if seed is None else keras.random.SeedGenerator(seed)
        out = []
        with _util.Progress(n, enabled=progress, unit="sentence", label="sentence VAE sampling") as bar:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                z = ops.convert_to_numpy(keras.random.normal((m, self.latent_dim), seed=seed_generator))
                out.append(self.decode(z, temperature=temperature, seed=None if seed is None else seed + start))
                bar.update(start + m)
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder), "injection": self.injection,
                "beta": keras.saving.serialize_keras_object(self.beta_schedule), "free_bits": self.free_bits,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "beta"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def interpolate(z_a, z_b, steps: int = 6) -> np.ndarray:
    """Codes on the straight line from z_a to z_b (each (d,)), endpoints included: NumPy (steps, d)."""
    steps = _util.positive_int("steps", steps, minimum=2)
    z_a, z_b = np.asarray(z_a, "float32"), np.asarray(z_b, "float32")
    if z_a.shape != z_b.shape or z_a.ndim != 1:
        raise ValueError(f"z_a and z_b must be two codes of one shape (d,), got {z_a.shape} and {z_b.shape}.")
    t = np.linspace(0.0, 1.0, steps, dtype="float32")[:, None]
    return (1 - t) * z_a + t * z_b

