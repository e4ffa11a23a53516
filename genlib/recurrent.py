"""A recurrent language model: a character LSTM with constant-memory generation.

Chapter 8 (chapters/08_transformer.ipynb) trains it beside the GPT of ``genlib.transformer``
on the same windows of Tiny Shakespeare. The pieces:

* ``CharLSTM``: embedding -> ``depth`` LSTM layers -> a dense head, trained with ``fit`` on
  next-token cross-entropy (the same loss and ``bits_per_char`` metric as ``GPT``); ``step``
  advances the recurrence by one token from a carried state; ``generate`` samples with the
  GPT's conventions (prompt, temperature, top-k, Gumbel-max through ``transformer.choose_tokens``).
* ``lstm_param_count`` / ``lstm_units_for``: the parameter count in closed form, and the
  width that matches a given budget (to compare with a GPT at the same size).

An LSTM layer carries two vectors per sequence, the hidden state h and the cell c, each of
``units`` numbers. With input x_t and gates i (input), f (forget), o (output) and candidate g:

    i, f, o = sigmoid(W_* x_t + U_* h_{t-1} + b_*),   g = tanh(W_g x_t + U_g h_{t-1} + b_g),
    c_t = f * c_{t-1} + i * g,                        h_t = o * tanh(c_t).

Whatever the length of the text so far, the state is (h, c) per layer: generation needs
constant memory, where a transformer's key/value cache grows with the context.

Shapes: B batch, T sequence length, E embedding size, U units, V vocabulary size.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.distributions import gumbel_noise
from genlib.transformer import NextTokenLoss, choose_tokens, prompt_ids

DEFAULT_LENGTH = 256  # new tokens per sequence when ``generate`` is given no ``length``


def lstm_param_count(vocab_size, embed_dim, units, depth=1):
    """Parameters of ``CharLSTM(vocab_size, embed_dim, units, depth)``, in closed form.

    Embedding V*E; each LSTM layer 4 gates x (inputs*U + U*U + U) with inputs E for the first
    layer and U after; head U*V + V.
    """
    layers = sum(4 * ((embed_dim if i == 0 else units) * units + units * units + units) for i in range(depth))
    return vocab_size * embed_dim + layers + units * vocab_size + vocab_size


def lstm_units_for(num_params, vocab_size, embed_dim=64, depth=1, multiple=8):
    """The ``units`` (a multiple of ``multiple``) whose ``CharLSTM`` comes closest to ``num_params`` parameters."""
    num_params = positive_int("num_params", num_params)
    multiple = positive_int("multiple", multiple)
    best, units = None, multiple
    while True:
        count = lstm_param_count(vocab_size, embed_dim, units, depth)
        if best is None or abs(count - num_params) < abs(best[1] - num_params):
            best = (units, count)
        if count > num_params:
            return best[0]
        units += multiple


@keras.saving.register_keras_serializable(package="genlib")
class CharLSTM(NextTokenLoss, keras.Model):
    """A character-level LSTM language model: ids (B, T) -> next-token logits (B, T, V).

    Args:
        vocab_size: V.
        embed_dim: E, the size of each token's learned vector.
        units: U, the size of each layer's hidden state h and cell c.
        depth: stacked LSTM layers.
        dropout: dropout rate between layers (and before the head) while training.

    ``call(ids, initial_state=None, return_state=False)``: with ``return_state`` also the final
    states, a list of ``[h, c]`` per layer, each (B, U); ``initial_state`` takes such a list
    (None: zeros). logits[:, t] predict ids[:, t + 1]; train with ``fit(x, y)``, y = x shifted by
    one; the loss is the mean cross-entropy in nats, ``bits_per_char`` the same in bits.
    """

    def __init__(self, vocab_size, embed_dim=64, units=256, depth=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.embed_dim, self.units = positive_int("embed_dim", embed_dim), positive_int("units", units)
        self.depth, self.dropout = positive_int("depth", depth), _util.fraction("dropout", dropout)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.lstms = [keras.layers.LSTM(self.units, return_sequences=True, return_state=True, name=f"lstm_{i}")
                      for i in range(self.depth)]
        self.between = keras.layers.Dropout(self.dropout)
        self.head = keras.layers.Dense(self.vocab_size, name="head")
        self._track_next_token_loss()
        self._compiled = {}

    def build(self, input_shape=(None, None)):
        self.embedding.build(input_shape)
        shape = (*input_shape, self.embed_dim)
        for lstm in self.lstms:
            lstm.build(shape)
            shape = (*input_shape, self.units)
        self.head.build(shape)
        self.built = True

    def _check_state(self, states, batch=None):
        if len(states) != self.depth or any(len(s) != 2 for s in states):
            raise ValueError(f"initial_state must be a list of {self.depth} [h, c] pairs (one per layer), "
                             f"got {len(states)} entries.")
        for h, c in states:
            for s in (h, c):
                if len(s.shape) != 2 or s.shape[-1] != self.units or (batch is not None and s.shape[0] != batch):
                    raise ValueError(f"each state must be (batch, units={self.units}), got shape {tuple(s.shape)}.")

    def call(self, ids, training=None, initial_state=None, return_state=False):
        if len(ids.shape) != 2:
            raise ValueError(f"CharLSTM expects token ids of shape (batch, length), got shape {tuple(ids.shape)}.")
        if initial_state is not None:
            self._check_state(initial_state)
        x = self.embedding(ids)
        states = []
        for i, lstm in enumerate(self.lstms):
            x, h, c = lstm(x, initial_state=None if initial_state is None else list(initial_state[i]),
                           training=training)
            x = self.between(x, training=training)
            states.append([h, c])
        logits = self.head(x)
        return (logits, states) if return_state else logits

    # -- one token at a time ----------------------------------------------------------------

    def zero_state(self, batch_size):
        """The state before any token: ``[h, c]`` zeros (B, U) for each layer."""
        batch_size = positive_int("batch_size", batch_size)
        return [[ops.zeros((batch_size, self.units)), ops.zeros((batch_size, self.units))] for _ in self.lstms]

    def step(self, token, states):
        """Advance by one token: ids (B,) and the states -> logits (B, V) for the next token, new states.

        The same arithmetic as ``call`` on a sequence (each layer's ``LSTMCell``), so stepping
        through a text gives the logits ``call`` gives; the memory is the states, whatever the
        length of the text so far.
        """
        x = self.embedding(ops.cast(token, "int32"))
        new = []
        for lstm, (h, c) in zip(self.lstms, states):
            x, (h, c) = lstm.cell(x, [h, c], training=False)
            new.append([h, c])
        return self.head(x), new

    def _prefill_fn(self, prompt):
        logits, states = self(prompt, training=False, return_state=True)
        return logits[:, -1], states

    def _sample_fn(self, logits, states, noise, temperature, top_k):
        token = choose_tokens(logits, noise, temperature, top_k)
        logits, states = self.step(token, states)
        return token, logits, states

    def _steps(self):
        if not self._compiled:  # compiled once; the weights are read at every call
            self._compiled["prefill"] = _util.compile_step(self._prefill_fn, state=self.variables)
            self._compiled["sample"] = _util.compile_step(self._sample_fn, state=self.variables)
        return self._compiled["prefill"], self._compiled["sample"]

    def generate(self, n: int, *, seed=None, batch_size: int = 64, progress=None, prompt=None, length=None,
                 temperature: float = 1.0, top_k=None) -> np.ndarray:
        """Sample ``n`` sequences of token ids: each is the prompt followed by ``length`` new tokens.

        The arguments and the result are those of ``genlib.transformer.GPT.generate`` (n, seed,
        batch_size, progress, prompt, temperature, top_k), except that
        ``length`` may be any number (None: ``DEFAULT_LENGTH``, 256): the recurrence has no maximum
        context.

        The prompt is read in one pass; then each new token costs one ``step`` and the memory
        is the (h, c) states, constant in the number of tokens. The Gumbel noise of each step is
        drawn from one seeded ``SeedGenerator`` per batch.

        Returns int32 NumPy (n, P + length), ready for the vocabulary's ``decode``.
        """
        n, batch_size = positive_int("n", n), positive_int("batch_size", batch_size)
        length = DEFAULT_LENGTH if length is None else positive_int("length", length)
        prompt = prompt_ids(prompt, n, self.vocab_size)
        temperature = _util.number("temperature", temperature, low=0.0)
        top_k = _util.optional_positive_int("top_k", top_k) or 0  # 0: keep every token
        if not self.built:
            self.build((None, None))
        prefill, sample = self._steps()
        tensor = ops.convert_to_tensor
        temperature_t, top_k_t = tensor(temperature, "float32"), tensor(top_k, "int32")
        out = []
        with _util.Progress(n * length, enabled=progress, unit="token", label="sampling") as bar:
            for start in range(0, n, batch_size):
                batch = prompt[start: start + batch_size]
                generator = keras.random.SeedGenerator(None if seed is None else seed + start)
                logits, states = prefill(tensor(batch))
                tokens = []
                for _ in range(length):
                    noise = gumbel_noise((len(batch), self.vocab_size), seed=generator)
                    token, logits, states = sample(logits, states, noise, temperature_t, top_k_t)
                    tokens.append(ops.convert_to_numpy(token))
                    bar.update(bar.done + len(batch))
                out.append(np.concatenate([batch, np.stack(tokens, axis=1).astype("int32")], axis=1))
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "units": self.units, "depth": self.depth, "dropout": self.dropout}
