"""DALL·E 2 (unCLIP) in miniature: a prior from CLIP text embeddings to CLIP image embeddings.

Chapter 12 (chapters/12_multimodal.ipynb). unCLIP (Ramesh et al. 2022) draws an image for a
caption in two stages: a **prior** ``p(z_img | z_txt)`` samples a CLIP image embedding for the
caption's CLIP text embedding, and a **decoder** ``p(x | z_img)`` (a diffusion model conditioned
on the image embedding; here ``genlib.diffusion.DiffusionModel(condition_dim=D)``) draws the
image. Many images fit one caption, so the prior must be a distribution, not a function.

* ``PriorNetwork``: a residual MLP ``v_theta(z_t, t, z_txt)`` over embedding vectors.
* ``FlowPrior``: conditional flow matching (the linear path of ``genlib.flow_matching``) over
  scaled unit image embeddings, conditioned on the text embedding, with condition dropout for
  classifier-free guidance; ``generate(conditions=...)`` returns unit image embeddings.
* ``RegressionPrior``: the baseline, an MLP trained to output the image embedding directly (one
  answer per caption: the direction of the conditional mean).
* ``unclip_generate``: prior, then decoder: images for text embeddings.
* ``mean_pairwise_cosine``: how alike a group of embeddings is (1: identical).

Shapes: B batch, D embedding size.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.flow_matching import SOLVERS, interpolate, ode_sample, sample_time, velocity_loss, velocity_target
from genlib.multimodal import l2_normalize


def _check_vectors(name, x, dim):
    x = np.asarray(x, "float32")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must be (n, {dim}) embedding vectors, got shape {x.shape}.")
    return x


def _check_conditions(conditions, n, dim):
    # generate's conditions: (n, D) text embeddings, one per sample; n may be left out.
    if conditions is None:
        raise ValueError("generate needs conditions=(n, D) text embeddings: a prior samples given a caption.")
    conditions = _check_vectors("conditions", conditions, dim)
    n = len(conditions) if n is None else positive_int("n", n)
    if len(conditions) != n:
        raise ValueError(f"need n={n} conditions, got {len(conditions)}.")
    return conditions, n


@keras.saving.register_keras_serializable(package="genlib")
class PriorNetwork(keras.layers.Layer):
    """Residual MLP over vectors: ``(z_t (B, D), t (B,), condition (B, D)) -> (B, D)``.

    The input is ``[z_t, condition, sin/cos(t f_k)]`` with geometric frequencies f_k; then ``depth``
    pre-norm residual blocks ``h + W_2 gelu(W_1 LN(h))`` and a linear read-out.

    Args:
        embed_dim: D.
        width: hidden width.
        depth: residual blocks.
        frequencies: number of time frequencies (the time features are twice as many).
    """

    def __init__(self, embed_dim: int, width: int = 256, depth: int = 3, frequencies: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.width = positive_int("embed_dim", embed_dim), positive_int("width", width)
        self.depth, self.frequencies = positive_int("depth", depth), positive_int("frequencies", frequencies)
        self.inp = keras.layers.Dense(self.width, name="input")
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}") for i in range(self.depth + 1)]
        self.hidden = [keras.layers.Dense(2 * self.width, activation="gelu", name=f"hidden{i}")
                       for i in range(self.depth)]
        self.back = [keras.layers.Dense(self.width, name=f"back{i}") for i in range(self.depth)]
        self.out = keras.layers.Dense(self.embed_dim, name="output")

    def build(self, input_shape=None):
        self.inp.build((None, 2 * self.embed_dim + 2 * self.frequencies))
        for layer in self.norms + self.hidden:
            layer.build((None, self.width))
        for layer in self.back:
            layer.build((None, 2 * self.width))
        self.out.build((None, self.width))

    def call(self, z_t, t, condition):
        freqs = np.exp(np.linspace(0.0, math.log(1000.0), self.frequencies)).astype("float32")
        angles = ops.reshape(ops.cast(t, "float32"), (-1, 1)) * freqs
        h = self.inp(ops.concatenate([z_t, condition, ops.sin(angles), ops.cos(angles)], axis=-1))
        for norm, hidden, back in zip(self.norms, self.hidden, self.back):
            h = h + back(hidden(norm(h)))
        return self.out(self.norms[-1](h))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "width": self.width, "depth": self.depth,
                "frequencies": self.frequencies}


@keras.saving.register_keras_serializable(package="genlib")
class FlowPrior(keras.Model):
    """unCLIP's prior as conditional flow matching: a distribution over image embeddings given a text embedding.

    Data: ``x_0 = sqrt(D) z_img``, the unit image embedding scaled so that its entries have about unit
    variance, like the noise ``eps ~ N(0, I)`` it is joined to by ``x_t = (1 - t) x_0 + t eps``.
    ``PriorNetwork`` regresses the velocity ``eps - x_0`` given ``(x_t, t, z_txt)``; the text embedding
    is replaced by the null condition 0 with probability ``condition_dropout``, for guidance.
    Sampling integrates the ODE from t = 1 (noise) to t = 0 and projects onto the unit sphere.

    Args:
        embed_dim: D.
        width, depth: the ``PriorNetwork``.
        condition_dropout: probability of training a pair as unconditional.
        seed: seed of the training noise.

    ``fit((text_embeddings, image_embeddings))``, both (N, D) unit vectors. Tracked: ``loss``
    (mean squared velocity error per entry).
    """

    def __init__(self, embed_dim: int, width: int = 256, depth: int = 3, condition_dropout: float = 0.1, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.condition_dropout = _util.fraction("condition_dropout", condition_dropout)
        self.seed = seed
        self.network = PriorNetwork(self.embed_dim, width, depth, name="network")
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def scale(self):
        """sqrt(D): the factor between unit embeddings and the flow's data ``x_0``."""
        return math.sqrt(self.embed_dim)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def build(self, input_shape=None):
        self.network.build()
        self.built = True

    def call(self, inputs, training=False):
        """``(text (B, D), image (B, D))`` -> ``(v_pred, v_target)``: one random point of each pair's path."""
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError("FlowPrior expects inputs (text_embeddings, image_embeddings).")
        text, image = (ops.cast(v, "float32") for v in inputs)
        x0 = self.scale * image
        batch = ops.shape(x0)[0]
        t = sample_time(batch, seed=self.noise_seed)
        noise = keras.random.normal(ops.shape(x0), seed=self.noise_seed)
        if training and self.condition_dropout > 0:
            drop = keras.random.uniform((batch, 1), seed=self.noise_seed) < self.condition_dropout
            text = ops.where(drop, 0.0, text)
        return self.network(interpolate(x0, noise, t), t, text), velocity_target(x0, noise)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = velocity_loss(y_pred)  # the loss of genlib.flow_matching, on embedding vectors
        self.loss_tracker.update_state(loss)
        return loss

    def velocity(self, x_t, t, conditions, guidance: float = 1.0):
        """Guided velocity ``v(x_t, t, 0) + w (v(x_t, t, z_txt) - v(x_t, t, 0))`` (w = 1: conditional)."""
        if guidance == 1:
            return self.network(x_t, t, conditions)
        v_c = self.network(x_t, t, conditions)
        v_u = self.network(x_t, t, ops.zeros_like(conditions))
        return v_u + guidance * (v_c - v_u)

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 1000, progress=None, conditions=None,
                 steps: int = 16, guidance: float = 1.0, solver: str = "euler") -> np.ndarray:
        """Sample one unit image embedding per text embedding: (n, D) NumPy.

        Args:
            n: number of samples (= ``len(conditions)``; may be left out).
            seed: seeds the starting noise.
            batch_size: samples per network call.
            progress: a progress bar over the solver steps (None: except under the smoke profile).
            conditions: (n, D) text embeddings.
            steps, solver: the ODE solver (``genlib.flow_matching.ode_sample``).
            guidance: classifier-free guidance weight w (0: ignore the text, 1: conditional).
        """
        conditions, n = _check_conditions(conditions, n, self.embed_dim)
        batch_size, steps = positive_int("batch_size", batch_size), positive_int("steps", steps)
        guidance = _util.number("guidance", guidance, low=0.0)
        _util.choice("solver", solver, SOLVERS)
        if not self.built:
            self.build()
        noise = ops.convert_to_numpy(keras.random.normal((n, self.embed_dim), seed=keras.random.SeedGenerator(seed)))
        out = []
        batches = range(0, n, batch_size)
        with _util.Progress(steps * len(batches), enabled=progress, label="prior sampling") as bar:
            for start in batches:
                c = ops.convert_to_tensor(conditions[start: start + batch_size])
                x = ode_sample(lambda x, t, c=c: self.velocity(x, t, c, guidance), noise[start: start + batch_size],
                               steps=steps, solver=solver, progress=bar)
                out.append(ops.convert_to_numpy(l2_normalize(x)))
        return np.concatenate(out)

    def get_config(self):
        net = self.network
        return {**super().get_config(), "embed_dim": self.embed_dim, "width": net.width, "depth": net.depth,
                "condition_dropout": self.condition_dropout, "seed": self.seed}


@keras.saving.register_keras_serializable(package="genlib")
class RegressionPrior(keras.Model):
    """The baseline prior: an MLP from a text embedding straight to a unit image embedding.

    Trained on ``|f(z_txt) - z_img|^2 = 2 - 2 cos`` between unit vectors, it learns the direction of
    the conditional mean ``E[z_img | z_txt]``: one embedding per caption, however many images fit it.

    Args:
        embed_dim: D.
        width, depth: the MLP (a ``PriorNetwork`` whose noisy input and time are fixed at 0).

    ``fit(text_embeddings, image_embeddings)``. Tracked: ``loss``, ``cosine`` (mean cosine to the target).
    """

    def __init__(self, embed_dim: int, width: int = 256, depth: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.network = PriorNetwork(self.embed_dim, width, depth, name="network")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.cosine_tracker = keras.metrics.Mean(name="cosine")

    @property
    def metrics(self):
        return [self.loss_tracker, self.cosine_tracker]

    def build(self, input_shape=None):
        self.network.build()
        self.built = True

    def call(self, text, training=False):
        text = ops.cast(text, "float32")
        zeros = ops.zeros_like(text)
        return l2_normalize(self.network(zeros, ops.zeros((ops.shape(text)[0],)), text))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        cosine = ops.mean(ops.sum(y_pred * ops.cast(y, "float32"), axis=-1))
        loss = 2.0 - 2.0 * cosine
        self.loss_tracker.update_state(loss)
        self.cosine_tracker.update_state(cosine)
        return loss

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 1000, progress=None,
                 conditions=None) -> np.ndarray:
        """The image embedding for each text embedding, (n, D) unit vectors; deterministic (``seed`` is unused)."""
        conditions, n = _check_conditions(conditions, n, self.embed_dim)
        batch_size = positive_int("batch_size", batch_size)
        if not self.built:
            self.build()
        return np.concatenate([ops.convert_to_numpy(self(conditions[i: i + batch_size]))
                               for i in range(0, n, batch_size)])

    def get_config(self):
        net = self.network
        return {**super().get_config(), "embed_dim": self.embed_dim, "width": net.width, "depth": net.depth}


def unclip_generate(prior, decoder, text_embeddings, *, seed=None, prior_options=None, **decoder_options):
    """unCLIP: image embeddings from ``prior.generate(conditions=text)``, then images from the decoder.

    ``decoder``: a ``DiffusionModel`` (or ``FlowMatchingModel``) with ``condition_dim`` D, trained on
    image embeddings. ``prior_options`` go to the prior's ``generate`` (e.g. ``steps``, ``guidance``),
    the other keywords to the decoder's (e.g. ``guidance``, ``steps``, ``progress``).
    Returns ``(images, image_embeddings)``, NumPy.
    """
    if getattr(decoder, "condition_dim", None) is None:
        raise ValueError("the decoder must be conditioned on vectors (built with condition_dim).")
    z = prior.generate(seed=seed, conditions=text_embeddings, **(prior_options or {}))
    if z.shape[1] != decoder.condition_dim:
        raise ValueError(f"the prior gives {z.shape[1]}-d embeddings; the decoder takes {decoder.condition_dim}.")
    return decoder.generate(len(z), labels=z, seed=seed, **decoder_options), z


def mean_pairwise_cosine(embeddings, groups) -> float:
    """Mean cosine between distinct members of each group, averaged over groups (1: all members alike).

    ``embeddings`` (N, D) unit vectors; ``groups`` (N,) ints, e.g. the prompt each sample was drawn for.
    """
    e, g = np.asarray(embeddings, "float64"), np.asarray(groups)
    if e.ndim != 2 or g.shape != (len(e),):
        raise ValueError(f"need embeddings (N, D) and one group per row, got {e.shape} and {g.shape}.")
    means = []
    for k in np.unique(g):
        m = e[g == k]
        if len(m) > 1:
            s = m @ m.T
            means.append((s.sum() - np.trace(s)) / (len(m) * (len(m) - 1)))
    if not means:
        raise ValueError("every group has one member: no pairs to compare.")
    return float(np.mean(means))
