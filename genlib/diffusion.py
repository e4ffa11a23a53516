"""Denoising diffusion models: DDPM training, DDPM and DDIM sampling, classifier-free guidance.

Chapter 7 (chapters/07_diffusion.ipynb); chapter 12 (chapters/12_multimodal.ipynb) conditions the
same model on text embeddings.

The forward process adds Gaussian noise in ``T`` small steps, ``q(x_t | x_0) =
N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``; a network ``eps_theta(x_t, t)`` learns to
predict the noise that was added, and samplers run the process backwards from pure noise.

* ``NoiseSchedule``: ``beta_t`` (linear or cosine) and everything derived from it
  (``alpha_bar``, signal and noise rates, the posterior variance).
* ``q_sample``: draw ``x_t`` from ``x_0`` in one step (the closed form); ``q_posterior``: the
  Gaussian ``q(x_{t-1} | x_t, x_0)`` that a reverse step imitates.
* ``SinusoidalEmbedding``, ``ResBlock``, ``AttentionBlock``, ``UNet``: the noise predictor, from
  ``genlib.unet`` (re-exported here).
* ``DiffusionModel``: trains ``UNet`` on the simple loss ``||eps - eps_theta(x_t, t)||^2`` with
  ``fit``, keeps an exponential moving average (EMA) of its weights, and ``generate``s with them.
  Optional class labels, dropped to a *null label* at random while training, give
  classifier-free guidance.
* ``ddpm_step``, ``ddim_step``, ``ddpm_sample``, ``ddim_sample``: the samplers, written for any
  noise predictor ``eps_fn(x_t, t) -> eps`` (a network, or an exact oracle in the tests).
* ``slerp``: spherical interpolation between two noise images.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

# The noise predictor lives in genlib.unet; its names are re-exported here for the chapter.
from genlib import _util
from genlib._util import positive_int
from genlib.unet import AttentionBlock, ResBlock, SinusoidalEmbedding, UNet  # noqa: F401

SCHEDULES = ("linear", "cosine", "offset_cosine")
LOSSES = ("l2", "l1")


class NoiseSchedule:
    """The variance schedule ``beta_1..beta_T`` and the quantities the samplers need.

    Arrays are float64 NumPy of length ``T``; index ``i`` holds step ``t = i + 1`` (the code
    counts steps from 0, the math from 1). ``alpha_bar[i] = prod_{j<=i} (1 - beta[j])``.

    Args:
        name: ``"linear"`` (Ho et al. 2020; ``beta`` from 1e-4 to 0.02 at T = 1000, rescaled by
            1000 / T so that shorter chains still end in noise), ``"cosine"`` (Nichol &
            Dhariwal 2021: ``alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2)``, normalised), or
            ``"offset_cosine"``: the signal rate ``sqrt(alpha_bar) = cos(phi)`` with the angle
            ``phi`` linear in t between ``arccos(max_signal_rate)`` at the first step and
            ``arccos(min_signal_rate)`` at the last, so the chain neither starts at an
            invisible amount of noise nor ends at an invisible amount of signal.
        timesteps: T, the number of noising steps.
        s: offset of the cosine schedule (keeps ``beta_1`` from being tiny).
        min_signal_rate, max_signal_rate: the offset cosine's end points (ignored otherwise).
    """

    def __init__(self, name: str = "cosine", timesteps: int = 1000, s: float = 0.008,
                 min_signal_rate: float = 0.02, max_signal_rate: float = 0.95):
        self.name = _util.choice("schedule", name, SCHEDULES)
        self.timesteps, self.s = positive_int("timesteps (T)", timesteps), float(s)
        self.min_signal_rate = _util.number("min_signal_rate", min_signal_rate, 0.0, 1.0, low_open=True, high_open=True)
        self.max_signal_rate = _util.number("max_signal_rate", max_signal_rate, 0.0, 1.0, low_open=True, high_open=True)
        if self.min_signal_rate >= self.max_signal_rate:
            raise ValueError(f"min_signal_rate ({min_signal_rate}) must be below max_signal_rate ({max_signal_rate}).")
        T = self.timesteps
        if name == "linear":
            scale = 1000.0 / T
            beta = np.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype="float64")
            alpha_bar = np.cumprod(1.0 - beta)
        elif name == "cosine":
            f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
            # Clipping beta away from 1 keeps the last steps invertible (cos^2 -> 0 at t = T).
            beta = np.clip(1.0 - f[1:] / f[:-1], 1e-8, 0.999)
            alpha_bar = np.cumprod(1.0 - beta)
        else:
            start, end = math.acos(self.max_signal_rate), math.acos(self.min_signal_rate)
            phi = start + np.linspace(0.0, 1.0, T) * (end - start) if T > 1 else np.array([end])
            alpha_bar = np.cos(phi) ** 2
            beta = 1.0 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
        self.beta = beta
        self.alpha = 1.0 - beta
        self.alpha_bar = alpha_bar
        self.alpha_bar_prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        self.signal_rate = np.sqrt(self.alpha_bar)  # sqrt(alpha_bar_t): how much of x_0 is left
        self.noise_rate = np.sqrt(1.0 - self.alpha_bar)  # sqrt(1 - alpha_bar_t): the noise's std
        # Variance of q(x_{t-1} | x_t, x_0), the "beta tilde" of the DDPM paper.
        self.posterior_variance = beta * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    def gather(self, values, t):
        """``values[t]`` for integer steps ``t`` (batch,) in [0, T), as float32 (batch, 1, 1, 1) for broadcasting."""
        if isinstance(t, (int, np.integer, np.ndarray, list, tuple)):
            # Check steps we can see: out of range, a gather fails obscurely on a CPU and
            # returns zeros silently on a GPU. (Steps drawn inside a traced step are in range
            # by construction and cannot be looked at.)
            steps = np.asarray(t)
            if steps.size and (steps.min() < 0 or steps.max() >= self.timesteps):
                raise ValueError(f"steps t must lie in [0, T) = [0, {self.timesteps}) (index t is step t + 1), "
                                 f"got values from {steps.min()} to {steps.max()}.")
        table = ops.convert_to_tensor(np.asarray(values, dtype="float32"))
        return ops.reshape(ops.take(table, ops.cast(t, "int32")), (-1, 1, 1, 1))

    def get_config(self):
        return {"name": self.name, "timesteps": self.timesteps, "s": self.s,
                "min_signal_rate": self.min_signal_rate, "max_signal_rate": self.max_signal_rate}


def q_sample(schedule: NoiseSchedule, x0, t, noise):
    """Forward process in one step: ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.

    Shapes: x0, noise (batch, H, W, C); t (batch,) integer steps in [0, T). Returns (batch, H, W, C).
    """
    return schedule.gather(schedule.signal_rate, t) * x0 + schedule.gather(schedule.noise_rate, t) * noise


# ---------------------------------------------------------------------------
# Samplers: each takes any noise predictor eps_fn(x_t, t) -> eps, with t (batch,) int32.


def timestep_sequence(timesteps: int, steps: int) -> np.ndarray:
    """``steps`` distinct step indices from ``T - 1`` down to 0, evenly spaced (a DDIM sub-sequence)."""
    timesteps, steps = positive_int("timesteps (T)", timesteps), positive_int("steps", steps)
    if steps > timesteps:
        raise ValueError(f"steps ({steps}) cannot exceed the schedule's T ({timesteps}).")
    # From T - 1 down: a single step must start at the noisiest index, not at 0.
    return np.unique(np.round(np.linspace(timesteps - 1, 0, steps)).astype("int64"))[::-1]


def predict_x0(schedule: NoiseSchedule, x_t, t: int, eps, clip=None):
    """Invert the forward process at step ``t`` (int): ``x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)``.

    With ``clip=(low, high)`` the estimate is clipped to the data range and ``eps`` recomputed to match.
    Returns (x0, eps), each shaped like x_t.
    """
    a, b = float(schedule.signal_rate[t]), float(schedule.noise_rate[t])
    x0 = (x_t - b * eps) / a
    if clip is not None:
        x0 = ops.clip(x0, clip[0], clip[1])
        eps = (x_t - a * x0) / b
    return x0, eps


def q_posterior(schedule: NoiseSchedule, x0, x_t, t: int):
    """The forward process's posterior ``q(x_{t-1} | x_t, x_0) = N(mean, variance I)`` at step ``t`` (int).

    ``mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0 + sqrt(alpha_t) (1 - alpha_bar_{t-1})
    / (1 - alpha_bar_t) x_t`` and ``variance = beta tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    beta_t`` (Bayes' rule on two Gaussians in x_{t-1}). Returns (mean shaped like x_t, variance float).
    """
    abar, abar_prev = schedule.alpha_bar[t], schedule.alpha_bar_prev[t]
    coef_x0 = math.sqrt(abar_prev) * schedule.beta[t] / (1.0 - abar)
    coef_xt = math.sqrt(schedule.alpha[t]) * (1.0 - abar_prev) / (1.0 - abar)
    return coef_x0 * x0 + coef_xt * x_t, float(schedule.posterior_variance[t])


def ddpm_step(schedule: NoiseSchedule, x_t, t: int, eps, noise, clip=None):
    """One ancestral step ``x_t -> x_{t-1}``, a draw from ``q(x_{t-1} | x_t, x0 = predicted x0)``.

    The posterior mean (``q_posterior``) equals ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) /
    sqrt(alpha_t)`` when x0 is not clipped. The variance is ``beta tilde_t``; no noise at the
    last step (t = 0). Returns (x_{t-1}, x0).
    """
    x0, _ = predict_x0(schedule, x_t, t, eps, clip)
    mean, variance = q_posterior(schedule, x0, x_t, t)
    if t == 0:
        return mean, x0
    return mean + math.sqrt(variance) * noise, x0


def ddim_step(schedule: NoiseSchedule, x_t, t: int, t_prev: int, eps, eta: float = 0.0, noise=None, clip=None):
    """One DDIM step from step ``t`` to an earlier step ``t_prev`` (-1 means the data, alpha_bar = 1).

    ``x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)``:
    eta = 0 is deterministic, eta = 1 with every step is the DDPM sampler. Returns (x_s, x0).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    x0, eps = predict_x0(schedule, x_t, t, eps, clip)
    abar_t = schedule.alpha_bar[t]
    abar_s = schedule.alpha_bar[t_prev] if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
    x_s = math.sqrt(abar_s) * x0 + math.sqrt(max(1.0 - abar_s - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise for the step.")
        x_s = x_s + sigma * noise
    return x_s, x0


def _run_chain(step_fn, ts, x, seed, progress, keep):
    seed = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
    # A caller sampling several batches passes one shared bar; otherwise the chain has its own.
    bar = progress if isinstance(progress, _util.Progress) else _util.Progress(len(ts), enabled=progress,
                                                                               label="sampling")
    done = bar.done
    xs, x0s = ([ops.convert_to_numpy(x)], []) if keep else (None, None)
    for i, t in enumerate(ts):
        noise = keras.random.normal(ops.shape(x), seed=seed)
        x, x0 = step_fn(i, int(t), x, noise)
        if keep:
            xs.append(ops.convert_to_numpy(x))
            x0s.append(ops.convert_to_numpy(x0))
        bar.update(done + i + 1)
    if bar is not progress:
        bar.close()
    return (x, np.stack(xs), np.stack(x0s)) if keep else x


def ddpm_sample(eps_fn, schedule: NoiseSchedule, x_T, seed=None, clip=None, progress=False,
                return_trajectory=False):
    """Ancestral sampling through all T steps from noise ``x_T`` (batch, H, W, C).

    ``seed`` seeds the step noise; ``progress``: show a bar (None: except under the smoke profile).
    ``clip=(low, high)`` clips each x0 prediction to the data range (see ``predict_x0``).

    Returns x_0, or (x_0, x_t per step (T+1, batch, ...), x0 predictions (T, batch, ...)).
    """
    ts = np.arange(schedule.timesteps)[::-1]

    def step(i, t, x, noise):
        eps = eps_fn(x, ops.full((ops.shape(x)[0],), t, dtype="int32"))
        return ddpm_step(schedule, x, t, eps, noise, clip)

    return _run_chain(step, ts, ops.convert_to_tensor(x_T, "float32"), seed, progress, return_trajectory)


def ddim_sample(eps_fn, schedule: NoiseSchedule, x_T, steps: int = 50, eta: float = 0.0, seed=None, clip=None,
                progress=False, return_trajectory=False):
    """DDIM sampling with ``steps`` network calls from noise ``x_T`` (batch, H, W, C).

    ``eta = 0`` (default) is deterministic: the same ``x_T`` always gives the same image.
    Returns x_0, or (x_0, x_t per step (steps+1, batch, ...), x0 predictions (steps, batch, ...)).
    """
    ts = timestep_sequence(schedule.timesteps, steps)
    prev = np.append(ts[1:], -1)

    def step(i, t, x, noise):
        eps = eps_fn(x, ops.full((ops.shape(x)[0],), t, dtype="int32"))
        return ddim_step(schedule, x, t, int(prev[i]), eps, eta, noise, clip)

    return _run_chain(step, ts, ops.convert_to_tensor(x_T, "float32"), seed, progress, return_trajectory)


def slerp(a, b, weights) -> np.ndarray:
    """Spherical interpolation between noise arrays ``a`` and ``b`` (same shape) at ``weights`` in [0, 1].

    Gaussian noise in many dimensions lives near a sphere of radius sqrt(D); a straight line
    between two draws passes inside it (the midpoint has norm about sqrt(D/2)), where the
    model never saw noise. Slerp keeps the norm. Returns (len(weights), *a.shape).
    """
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
    omega = np.arccos(np.clip(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    w = np.asarray(weights, "float64").reshape(-1, *([1] * a.ndim))
    if omega < 1e-6:  # (anti)parallel: the great circle is undefined, the line is fine
        return ((1 - w) * a + w * b).astype("float32")
    return ((np.sin((1 - w) * omega) * a + np.sin(w * omega) * b) / np.sin(omega)).astype("float32")


# ---------------------------------------------------------------------------
# The model


class EMATraining:
    """The training step shared by ``DiffusionModel`` and ``flow_matching.FlowMatchingModel``.

    One optimizer step on the model's ``compute_loss`` (noise or velocity regression), then one
    EMA update of ``ema_network`` towards ``network`` with the warm-up ``min(d, (1 + n) / (10 + n))``.
    The model provides ``network``, ``ema_network``, ``ema_decay``, ``ema_updates`` and ``loss_tracker``.
    """

    def training_step(self, data):
        """One optimizer step, then one EMA update (``fit`` runs it on every backend)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_variables
        _, _, grads = _util.value_and_grad(lambda: self.compute_loss(x, y, training=True), weights)
        self.optimizer.apply(grads, weights)
        self.update_ema()
        return {"loss": self.loss_tracker.result()}

    def update_ema(self):
        """One EMA update of ``ema_network`` towards ``network`` (called after every training step)."""
        n = self.ema_updates
        decay = ops.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))
        for e, w in zip(self.ema_network.weights, self.network.weights):
            e.assign(decay * e + (1.0 - decay) * w)
        n.assign(n + 1.0)


@keras.saving.register_keras_serializable(package="genlib")
class DiffusionModel(EMATraining, _util.TrainStepModel):
    """A DDPM: a UNet trained to predict the noise in ``x_t``, with an EMA copy for sampling.

    Training (``fit(images)`` or ``fit(images, labels)``, images in [-1, 1]): draw t uniformly
    in [0, T), eps ~ N(0, I), form ``x_t = q_sample(x_0, t, eps)`` and minimise the mean of
    ``(eps_theta(x_t, t) - eps)^2`` over pixels (the "simple" loss; 1.0 for the trivial
    predictor eps = 0). After each optimizer step the EMA weights move towards the trained
    ones: ``ema <- d ema + (1 - d) w`` with ``d = min(ema_decay, (1 + n) / (10 + n))`` at update
    n, so short runs are not dominated by the random initial weights. With ``num_classes``,
    labels are replaced by the null label with probability ``label_dropout``, so one network
    learns both ``eps(x_t, t, y)`` and ``eps(x_t, t)`` (classifier-free guidance). With
    ``condition_dim`` instead, the "labels" are condition vectors (batch, condition_dim), e.g.
    text embeddings, and the null condition is the zero vector.

    Args:
        image_shape: (H, W, C) of the images.
        widths, blocks_per_level, attention, groups: the UNet's size (see ``UNet``).
        num_classes: class count for conditioning, or None.
        schedule: ``"linear"`` or ``"cosine"``; timesteps: T.
        ema_decay: the EMA's decay d (0 keeps no average: the EMA equals the weights).
        label_dropout: probability of training a labelled example as unconditional.
        seed: seed of the training noise.
        condition_dim: size of condition vectors used in place of class labels, or None.
        loss: ``"l2"``, the simple loss ``(eps_theta - eps)^2`` (the variational bound with its
            weights dropped), or ``"l1"``, ``|eps_theta - eps|``: its gradient does not grow with
            the error, so the rare large errors of the noisiest steps pull less on the network.

    Tracked metric: ``loss`` (the loss per pixel: the simple loss, or the L1 error with ``loss="l1"``).
    """

    def __init__(self, image_shape=(16, 16, 1), widths=(32, 64), blocks_per_level: int = 1, attention: bool = True,
                 num_classes: int | None = None, schedule: str = "cosine", timesteps: int = 1000,
                 ema_decay: float = 0.999, label_dropout: float = 0.1, groups: int = 8, seed=None,
                 condition_dim: int | None = None, loss: str = "l2", **kwargs):
        super().__init__(**kwargs)
        image_shape = _util.shape("image_shape (H, W, C)", image_shape, rank=3)
        self.loss_name = _util.choice("loss", loss, LOSSES)
        self.schedule = NoiseSchedule(schedule, timesteps)
        self.image_shape, self.seed = image_shape, seed
        self.ema_decay = _util.fraction("ema_decay", ema_decay)
        self.label_dropout = _util.fraction("label_dropout", label_dropout, closed=True)
        net = dict(widths=tuple(widths), blocks_per_level=blocks_per_level, attention=attention,
                   num_classes=num_classes, image_channels=image_shape[-1], groups=groups, condition_dim=condition_dim)
        self.network = UNet(**net, name="network")
        self.ema_network = UNet(**net, name="ema_network")
        self.ema_network.trainable = False  # moved by update_ema, never by the optimizer
        self.num_classes, self.condition_dim = self.network.num_classes, self.network.condition_dim
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._eps_fns = {}

    @property
    def metrics(self):
        return [self.loss_tracker]

    def build(self, input_shape=None):
        shape = (None, *self.image_shape)
        self.network.build(shape)
        self.ema_network.build(shape)
        for v in self.ema_network.weights:  # also those of sublayers made in build (skips, attention)
            v.trainable = False
        self.ema_updates = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ema_updates")
        for e, w in zip(self.ema_network.weights, self.network.weights):
            e.assign(ops.copy(w))  # a copy: two variables sharing one JAX buffer break fit (it donates the state)
        self.built = True

    def _split(self, inputs):
        x0, labels = (inputs[0], inputs[1]) if isinstance(inputs, (tuple, list)) else (inputs, None)
        if tuple(x0.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images of shape (batch, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x0.shape)}.")
        if labels is not None and self.num_classes is None and self.condition_dim is None:
            raise ValueError("labels given, but the model was built without num_classes or condition_dim.")
        return x0, labels

    def call(self, inputs, training=False):
        """Noise images and predict the noise: ``inputs`` is x0 (batch, H, W, C) or (x0, labels).

        Returns (eps_pred, eps), each (batch, H, W, C); the loss compares them.
        """
        x0, labels = self._split(inputs)
        batch = ops.shape(x0)[0]
        t = keras.random.randint((batch,), 0, self.schedule.timesteps, seed=self.noise_seed)
        eps = keras.random.normal(ops.shape(x0), seed=self.noise_seed)
        x_t = q_sample(self.schedule, x0, t, eps)
        if labels is not None and training and self.label_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.noise_seed) < self.label_dropout
            if self.condition_dim is not None:
                labels = ops.where(ops.expand_dims(drop, -1), 0.0, ops.cast(labels, "float32"))
            else:
                labels = ops.where(drop, self.num_classes, ops.cast(labels, "int32"))
        return self.network(x_t, t, labels), eps

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The simple loss: the mean of ``(eps_pred - eps)^2`` over pixels (``|eps_pred - eps|`` with ``loss="l1"``).

        ``x``: images, or (images, labels); ``y``: labels that ``fit``/``evaluate`` received apart
        from the images (the prediction is then made with them).
        """
        if y is not None:
            x, y_pred = (x, y), None
        if y_pred is None:
            y_pred = self(x, training=training)
        eps_pred, eps = y_pred
        error = eps_pred - eps
        loss = ops.mean(ops.abs(error) if self.loss_name == "l1" else ops.square(error))
        self.loss_tracker.update_state(loss)
        return loss

    # -- sampling ------------------------------------------------------------------

    def predict_noise(self, x_t, t, labels=None, guidance: float = 1.0, use_ema: bool = True):
        """``eps(x_t, t)`` with classifier-free guidance: ``eps(null) + w (eps(y) - eps(null))``.

        ``guidance`` w = 0 is the unconditional model, 1 the conditional one, w > 1 pushes samples
        towards what distinguishes the class. Shapes: x_t (batch, H, W, C), t and labels (batch,)
        (labels (batch, condition_dim) for a vector-conditioned model).
        """
        net = self.ema_network if use_ema else self.network
        if labels is None:
            return net(x_t, t)
        if self.num_classes is None and self.condition_dim is None:
            raise ValueError("labels given, but the model was built without num_classes or condition_dim.")
        if guidance == 0:
            return net(x_t, t)
        if guidance == 1:
            return net(x_t, t, labels)
        if self.condition_dim is not None:
            labels = ops.cast(labels, "float32")
            null = ops.zeros_like(labels)
        else:
            labels, null = ops.cast(labels, "int32"), ops.full(ops.shape(labels), self.num_classes, dtype="int32")
        both = net(ops.concatenate([x_t, x_t]), ops.concatenate([t, t]), ops.concatenate([labels, null]))
        eps_c, eps_u = both[: ops.shape(x_t)[0]], both[ops.shape(x_t)[0]:]
        return eps_u + guidance * (eps_c - eps_u)

    def noise(self, n: int, seed=None):
        """Starting noise x_T ~ N(0, I), shape (n, H, W, C), as a NumPy array."""
        return ops.convert_to_numpy(keras.random.normal((positive_int("n", n), *self.image_shape), seed=seed))

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 500, progress=None, steps: int = 50,
                 sampler: str = "ddim", eta: float = 0.0, labels=None, guidance: float = 1.0, x_T=None,
                 clip: bool = True, use_ema: bool = True, compile=None) -> np.ndarray:
        """Generate images in [-1, 1] (the training data's range), shape (n, H, W, C), as a NumPy array.

        Args:
            n: number of images (may be left out when ``x_T`` is given).
            seed: int seed of the starting and step noise; the same seed gives the same images.
            batch_size: images per network call.
            progress: show a progress bar over the network calls (None: except under smoke).
            steps: network calls for DDIM (ignored by DDPM, which takes all T).
            sampler: ``"ddim"`` or ``"ddpm"``.
            eta: DDIM's noise level (0: deterministic).
            labels: (n,) class labels for a conditional model, (n, condition_dim) condition vectors
                for a vector-conditioned one, or None (unconditional).
            guidance: classifier-free guidance weight (see ``predict_noise``).
            x_T: starting noise (n, H, W, C); drawn from ``seed`` when None.
            clip: clip predicted x0 to [-1, 1] at each step.
            use_ema: sample with the EMA weights (the default) or the trained ones.
            compile: compile the network call (True), run it eagerly (False), or decide by the
                number of calls (None): compiling pays off from about 25 calls.
        """
        batch_size = positive_int("batch_size", batch_size)
        calls = (self.schedule.timesteps if sampler == "ddpm" else steps) * math.ceil(
            (len(x_T) if x_T is not None else positive_int("n", n)) / batch_size)
        x_T, labels, eps_model = self._prepare(n, seed, sampler, eta, labels, guidance, x_T, use_ema,
                                               compile or (compile is None and calls >= 25))
        outs = []
        with _util.Progress(calls, enabled=progress, label=f"{sampler.upper()} sampling") as bar:
            for start in range(0, len(x_T), batch_size):
                yb = None if labels is None else labels[start: start + batch_size]
                batch_seed = None if seed is None else seed + 1 + start
                out = self._chain(eps_model, x_T[start: start + batch_size], yb, sampler, steps, eta, batch_seed,
                                  clip, bar, keep=False)
                outs.append(np.clip(ops.convert_to_numpy(out), -1.0, 1.0))
        return np.concatenate(outs)

    def trajectory(self, n: int | None = None, *, seed=None, steps: int = 50, sampler: str = "ddim",
                   eta: float = 0.0, labels=None, guidance: float = 1.0, x_T=None, clip: bool = True,
                   use_ema: bool = True):
        """The whole chain for a few images, as ``generate`` runs it (one batch).

        Returns (x_0 (n, H, W, C) in [-1, 1], x_t at every step (steps + 1, n, H, W, C) from
        x_T on, the x0 predictions (steps, n, H, W, C)), as NumPy arrays.
        """
        x_T, labels, eps_model = self._prepare(n, seed, sampler, eta, labels, guidance, x_T, use_ema, False)
        x0, xs, x0s = self._chain(eps_model, x_T, labels, sampler, steps, eta, None if seed is None else seed + 1,
                                  clip, False, keep=True)
        return np.clip(ops.convert_to_numpy(x0), -1.0, 1.0), xs, x0s

    def _prepare(self, n, seed, sampler, eta, labels, guidance, x_T, use_ema, compile):
        # Check the arguments, draw x_T and pick the (compiled) noise predictor.
        _util.choice("sampler", sampler, ("ddim", "ddpm"))
        _util.number("eta", eta, low=0.0)
        guidance = _util.number("guidance", guidance)
        if not self.built:
            self.build()
        if x_T is None:
            x_T = self.noise(n, seed)
        else:
            x_T = np.asarray(x_T, "float32")
            if n is not None and n != len(x_T):
                raise ValueError(f"n ({n}) and the {len(x_T)} starting noises of x_T disagree.")
        if tuple(x_T.shape[1:]) != self.image_shape:
            raise ValueError(f"x_T must have shape (n, {', '.join(map(str, self.image_shape))}), got {x_T.shape}.")
        if labels is not None:
            if self.condition_dim is not None:
                labels = np.asarray(labels, "float32")
                if labels.ndim != 2 or labels.shape[1] != self.condition_dim:
                    raise ValueError(f"conditions must be shaped (n, {self.condition_dim}), got {labels.shape}.")
            else:
                labels = np.asarray(labels, "int32").reshape(-1)
            if len(labels) != len(x_T):
                raise ValueError(f"{len(x_T)} images but {len(labels)} labels.")

        def eps_model(x, t, y):  # a def, not a lambda: TF's AutoGraph cannot parse a lambda's source and warns
            return self.predict_noise(x, t, y, guidance, use_ema)

        if compile:
            key = (use_ema, labels is not None, guidance)
            if key not in self._eps_fns:
                # The compiled step reads the sampling network's weights: they are its state.
                net = self.ema_network if use_ema else self.network
                self._eps_fns[key] = _util.compile_step(eps_model, state=net.variables)
            eps_model = self._eps_fns[key]
        return x_T, labels, eps_model

    def _chain(self, eps_model, x_T, labels, sampler, steps, eta, seed, clip, progress, keep):
        y = None if labels is None else ops.convert_to_tensor(labels)
        eps_fn = (lambda x, t: eps_model(x, t, y))  # noqa: E731
        limits = (-1.0, 1.0) if clip else None
        if sampler == "ddpm":
            return ddpm_sample(eps_fn, self.schedule, x_T, seed, limits, progress, keep)
        return ddim_sample(eps_fn, self.schedule, x_T, steps, eta, seed, limits, progress, keep)

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "widths": list(self.network.widths),
                "blocks_per_level": self.network.blocks_per_level, "attention": self.network.attention,
                "num_classes": self.num_classes, "schedule": self.schedule.name,
                "timesteps": self.schedule.timesteps, "ema_decay": self.ema_decay,
                "label_dropout": self.label_dropout, "groups": self.network.groups, "seed": self.seed,
                "condition_dim": self.condition_dim, "loss": self.loss_name}
