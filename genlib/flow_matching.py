"""Flow matching with the linear (rectified-flow) path: training, Euler and Heun samplers, guidance, reflow.

Chapter 11 (chapters/11_flow_matching.ipynb). The same U-Net as chapter 7 (``genlib.unet``)
predicts a *velocity* instead of a noise.

A data image ``x0`` and a noise image ``eps ~ N(0, I)`` are joined by the straight line
``x_t = (1 - t) x0 + t eps`` for ``t`` in [0, 1] (t = 0: data, t = 1: noise). Along it the
image moves with the constant velocity ``d x_t / dt = eps - x0``. A network ``v_theta(x_t, t)``
regresses that conditional velocity in squared error; its minimiser is the *marginal*
velocity ``E[eps - x0 | x_t]``, whose ODE ``dx/dt = v(x, t)`` carries the noise distribution
at t = 1 to the data distribution at t = 0. Sampling integrates it from t = 1 down to 0.

* ``interpolate``, ``velocity_target``: the path and its time derivative.
* ``sample_time``: training times, uniform or logit-normal (Esser et al. 2024, SD3).
* ``time_grid``, ``euler_step``, ``heun_step``, ``ode_sample``: ODE solvers for any velocity
  field ``v_fn(x, t) -> v`` (a network, or an exact field in the tests) and any step count.
* ``FlowMatchingModel``: trains ``UNet`` with ``fit``, keeps an EMA copy, optional labels,
  condition vectors or token sequences read by cross-attention, each with a null condition
  (classifier-free guidance, as ``genlib.diffusion``), and ``generate``s with either solver.
* ``reflow_pairs``: (noise, sample) pairs from a trained model, to straighten it by training
  on them again (one rectification round, Liu et al. 2023).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib._util import positive_int
from genlib.diffusion import EMATraining
from genlib.unet import UNet

TIME_SAMPLING = ("uniform", "logit_normal")
SOLVERS = ("euler", "heun")
TIME_SCALE = 1000.0  # the U-Net's sinusoidal embedding was designed for step numbers 0..999: feed it 1000 t


def _column(t, like):
    """A time (scalar or (batch,)) as a (batch, 1, 1, ...) tensor that broadcasts against ``like``."""
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    if len(t.shape) == 0:
        return t
    return ops.reshape(t, (-1,) + (1,) * (len(like.shape) - 1))


def interpolate(x0, noise, t):
    """The linear path ``x_t = (1 - t) x0 + t eps``.

    Shapes: x0, noise (batch, ...); t a scalar or (batch,) in [0, 1]. Returns (batch, ...).
    """
    x0, noise = ops.convert_to_tensor(x0, "float32"), ops.convert_to_tensor(noise, "float32")
    t = _column(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0, noise):
    """The path's time derivative ``d x_t / dt = eps - x0``, the network's regression target (shape of x0)."""
    return ops.convert_to_tensor(noise, "float32") - ops.convert_to_tensor(x0, "float32")


def velocity_loss(y_pred):
    """The flow-matching loss from a model's ``(v_pred, target)`` pair: ``mean((v_pred - (eps - x0))^2)``."""
    v_pred, v = y_pred
    return ops.mean(ops.square(v_pred - v))


def sample_time(batch, method: str = "uniform", seed=None, mean: float = 0.0, std: float = 1.0):
    """Training times in (0, 1), shape (batch,).

    ``uniform``: t ~ U(0, 1). ``logit_normal``: t = sigmoid(mean + std n), n ~ N(0, 1), the
    choice of Stable Diffusion 3 (Esser et al. 2024): it spends more training on the middle of
    the path, where the velocity is hardest to predict, and less near the ends.
    """
    _util.choice("time_sampling", method, TIME_SAMPLING)
    if method == "uniform":
        return keras.random.uniform((batch,), seed=seed)
    return ops.sigmoid(mean + std * keras.random.normal((batch,), seed=seed))


# ---------------------------------------------------------------------------
# ODE solvers: each takes any velocity field v_fn(x, t) -> v, with t (batch,) float32 in [0, 1].


def time_grid(steps: int) -> np.ndarray:
    """``steps + 1`` equally spaced times from 1 (noise) down to 0 (data), float64."""
    return np.linspace(1.0, 0.0, positive_int("steps", steps) + 1)


def _times(x, t):
    return ops.full((ops.shape(x)[0],), float(t), dtype="float32")


def euler_step(v_fn, x, t: float, t_next: float):
    """One explicit Euler step of ``dx/dt = v(x, t)`` from ``t`` to ``t_next``: ``x + (t_next - t) v(x, t)``.

    One network call. Its local error is O(h^2) per step, so the error at t = 0 is O(h): halving
    the step size halves it. Shapes: x (batch, ...) -> (batch, ...).
    """
    return x + (t_next - t) * v_fn(x, _times(x, t))


def heun_step(v_fn, x, t: float, t_next: float):
    """One Heun step (explicit trapezoid rule, a 2nd-order Runge-Kutta method) from ``t`` to ``t_next``.

    ``x' = x + h v(x, t)`` (an Euler guess), then ``x + h (v(x, t) + v(x', t_next)) / 2`` with
    ``h = t_next - t``: the slope is averaged over both ends of the step. Two network calls;
    error at t = 0 is O(h^2), so halving the step size quarters it. Shapes as ``euler_step``.
    """
    h = t_next - t
    v = v_fn(x, _times(x, t))
    guess = x + h * v
    return x + 0.5 * h * (v + v_fn(guess, _times(x, t_next)))


def ode_sample(v_fn, noise, steps: int = 16, solver: str = "euler", progress=False, return_trajectory=False):
    """Integrate ``dx/dt = v(x, t)`` from ``x_1 = noise`` at t = 1 to t = 0 in ``steps`` equal steps.

    Args:
        v_fn: velocity field ``(x (batch, ...), t (batch,)) -> (batch, ...)``.
        noise: the starting points x_1 (batch, ...).
        steps: number of solver steps (Euler: one velocity evaluation each, Heun: two).
        solver: ``"euler"`` or ``"heun"``.
        progress: a ``Progress`` bar to advance (one unit per step), True/False/None for an own bar.
        return_trajectory: also return x at every grid time, (steps + 1, batch, ...) NumPy.

    Returns x_0 (a tensor), or (x_0, trajectory).
    """
    solver = _util.choice("solver", solver, SOLVERS)
    step_fn = euler_step if solver == "euler" else heun_step
    ts = time_grid(steps)
    x = ops.convert_to_tensor(noise, "float32")
    bar = progress if isinstance(progress, _util.Progress) else _util.Progress(steps, enabled=progress,
                                                                               label=f"{solver} sampling")
    done = bar.done
    xs = [ops.convert_to_numpy(x)] if return_trajectory else None
    for i in range(steps):
        x = step_fn(v_fn, x, float(ts[i]), float(ts[i + 1]))
        if return_trajectory:
            xs.append(ops.convert_to_numpy(x))
        bar.update(done + i + 1)
    if bar is not progress:
        bar.close()
    return (x, np.stack(xs)) if return_trajectory else x


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class FlowMatchingModel(EMATraining, _util.TrainStepModel):
    """Conditional flow matching on the linear path, with a U-Net velocity predictor and an EMA copy.

    Training (``fit(images)``, ``fit(images, labels)``, or ``fit({"x0": images, "noise": noise})``
    for fixed couplings as in reflow): draw t (``time_sampling``), eps ~ N(0, I) (unless given),
    form ``x_t = (1 - t) x0 + t eps`` and minimise the mean over pixels of
    ``(v_theta(x_t, t) - (eps - x0))^2``. The trivial predictor v = 0 scores
    ``E[(eps - x0)^2] = 1 + E[x0^2]`` per pixel. After each optimizer step the EMA weights move
    towards the trained ones (``ema <- d ema + (1 - d) w`` with ``d = min(ema_decay, (1 + n) / (10 + n))``
    at update n, as in ``genlib.diffusion``). Labels are replaced by the null label with
    probability ``label_dropout``, so one network learns ``v(x, t, y)`` and ``v(x, t)``.

    Args:
        image_shape: (H, W, C) of the data (images, or an autoencoder's latents).
        widths, blocks_per_level, attention, groups: the U-Net's size (see ``genlib.unet.UNet``).
        num_classes: class count for conditioning, or None; condition_dim: size of condition
            vectors used in place of labels (null: the zero vector), or None; context_dim: size of
            the tokens of a sequence read by cross-attention, given as labels = (context (batch, L,
            context_dim), mask (batch, L)) (null: all padding), or None; context_heads: its heads.
        time_sampling: ``"uniform"`` or ``"logit_normal"`` (see ``sample_time``).
        logit_mean, logit_std: the logit-normal's location and scale.
        ema_decay: the EMA's decay d in [0, 1); label_dropout: probability in [0, 1].
        clip: the data's value range (low, high), applied to the output of ``generate``; None for
            unbounded data such as latents.
        seed: seed of the training noise and times.

    Tracked metric: ``loss`` (squared velocity error per pixel).
    """

    def __init__(self, image_shape=(16, 16, 1), widths=(32, 64), blocks_per_level: int = 1, attention: bool = True,
                 num_classes: int | None = None, condition_dim: int | None = None, time_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, ema_decay: float = 0.999,
                 label_dropout: float = 0.1, groups: int = 8, clip=(-1.0, 1.0), seed=None,
                 context_dim: int | None = None, context_heads: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = _util.shape("image_shape (H, W, C)", image_shape, rank=3)
        self.time_sampling = _util.choice("time_sampling", time_sampling, TIME_SAMPLING)
        self.logit_mean = _util.number("logit_mean", logit_mean)
        self.logit_std = _util.number("logit_std", logit_std, low=0.0, low_open=True)
        self.ema_decay = _util.fraction("ema_decay", ema_decay)
        self.label_dropout = _util.fraction("label_dropout", label_dropout, closed=True)
        if clip is not None:
            if len(tuple(clip)) != 2 or not float(clip[0]) < float(clip[1]):
                raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}.")
            clip = (float(clip[0]), float(clip[1]))
        self.clip, self.seed = clip, seed
        net = dict(widths=tuple(widths), blocks_per_level=blocks_per_level, attention=attention,
                   num_classes=num_classes, image_channels=self.image_shape[-1], groups=groups,
                   condition_dim=condition_dim, context_dim=context_dim, context_heads=context_heads)
        self.network = UNet(**net, name="network")
        self.ema_network = UNet(**net, name="ema_network")
        self.ema_network.trainable = False  # moved by update_ema, never by the optimizer
        self.num_classes, self.condition_dim = self.network.num_classes, self.network.condition_dim
        self.context_dim = self.network.context_dim
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._v_fns = {}

    @property
    def metrics(self):
        return [self.loss_tracker]

    @property
    def conditional(self) -> bool:
        """Whether the model takes labels, condition vectors or a context (any of them)."""
        return self.num_classes is not None or self.condition_dim is not None or self.context_dim is not None

    def build(self, input_shape=None):
        shape = (None, *self.image_shape)
        self.network.build(shape)
        self.ema_network.build(shape)
        for v in self.ema_network.weights:
            v.trainable = False
        self.ema_updates = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ema_updates")
        for e, w in zip(self.ema_network.weights, self.network.weights):
            e.assign(ops.copy(w))  # a copy: two variables sharing one JAX buffer break fit
        self.built = True

    # -- training ------------------------------------------------------------------

    def _split(self, inputs):
        noise = None
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"x0", "noise", "labels"}
            if "x0" not in inputs or unknown:
                raise ValueError(f"a dict input needs 'x0' (and optionally 'noise', 'labels'), got {sorted(inputs)}.")
            x0, noise, labels = inputs["x0"], inputs.get("noise"), inputs.get("labels")
        elif isinstance(inputs, (tuple, list)):
            # (x0, labels), or (x0, context, mask) = (x0, (context, mask)) for a cross-attention model
            x0, labels = inputs[0], (inputs[1] if len(inputs) == 2 else tuple(inputs[1:]))
        else:
            x0, labels = inputs, None
        if tuple(x0.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images of shape (batch, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x0.shape)}.")
        if noise is not None and tuple(noise.shape[1:]) != self.image_shape:
            raise ValueError(f"noise must be shaped like the images, got {tuple(noise.shape)}.")
        if labels is not None and not self.conditional:
            raise ValueError("labels given, but the model was built without num_classes, condition_dim or "
                             "context_dim.")
        return ops.convert_to_tensor(x0, "float32"), noise, labels

    def call(self, inputs, training=False):
        """Draw t and eps, form x_t on the path and predict its velocity.

        ``inputs``: x0 (batch, H, W, C), (x0, labels), or a dict with ``x0`` and optional
        ``noise`` (a fixed coupling) and ``labels``. Returns (v_pred, v_target), each like x0.
        """
        x0, noise, labels = self._split(inputs)
        batch = ops.shape(x0)[0]
        t = sample_time(batch, self.time_sampling, self.noise_seed, self.logit_mean, self.logit_std)
        if noise is None:
            noise = keras.random.normal(ops.shape(x0), seed=self.noise_seed)
        noise = ops.convert_to_tensor(noise, "float32")
        x_t = interpolate(x0, noise, t)
        if labels is not None and training and self.label_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.noise_seed) < self.label_dropout
            labels = self.network.drop_condition(labels, drop)
        return self.network(x_t, TIME_SCALE * t, labels), velocity_target(x0, noise)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The flow-matching loss: the mean of ``(v_pred - (eps - x0))^2`` over pixels.

        ``x``: images, (images, labels) or a dict (see ``call``); ``y``: labels given to ``fit`` apart.
        """
        if y is not None:
            x, y_pred = (x, y), None
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = velocity_loss(y_pred)
        self.loss_tracker.update_state(loss)
        return loss

    # -- sampling ------------------------------------------------------------------

    def predict_velocity(self, x_t, t, labels=None, guidance: float = 1.0, use_ema: bool = True):
        """``v(x_t, t)`` with classifier-free guidance: ``v(null) + w (v(y) - v(null))``.

        ``guidance`` w = 0 is the unconditional field, 1 the conditional one, w > 1 extrapolates
        away from the unconditional field (the convention of ``DiffusionModel.predict_noise``).
        Shapes: x_t (batch, H, W, C), t (batch,) float in [0, 1], labels (batch,) int or
        (batch, condition_dim) -> (batch, H, W, C).
        """
        net = self.ema_network if use_ema else self.network
        time = TIME_SCALE * ops.cast(t, "float32")
        if labels is not None and not self.conditional:
            raise ValueError("labels given, but the model was built without num_classes, condition_dim or "
                             "context_dim.")
        if labels is None or guidance == 0:
            return net(x_t, time)
        if guidance == 1:
            return net(x_t, time, labels)
        null = net.null_condition(labels)
        if self.context_dim is not None:
            labels = (ops.cast(labels[0], "float32"), ops.cast(labels[1], "bool"))
        elif self.condition_dim is not None:
            labels = ops.cast(labels, "float32")
        else:
            labels = ops.cast(labels, "int32")
        both_labels = keras.tree.map_structure(lambda a, b: ops.concatenate([a, b]), labels, null)
        both = net(ops.concatenate([x_t, x_t]), ops.concatenate([time, time]), both_labels)
        v_c, v_u = both[: ops.shape(x_t)[0]], both[ops.shape(x_t)[0]:]
        return v_u + guidance * (v_c - v_u)

    def noise(self, n: int, seed=None):
        """Starting points x_1 ~ N(0, I), shape (n, H, W, C), as a NumPy array."""
        return ops.convert_to_numpy(keras.random.normal((positive_int("n", n), *self.image_shape), seed=seed))

    def generate(self, n: int | None = None, *, seed=None, batch_size: int = 500, progress=None, steps: int = 16,
                 solver: str = "euler", labels=None, guidance: float = 1.0, noise=None, use_ema: bool = True,
                 compile=None) -> np.ndarray:
        """Samples (n, H, W, C) as NumPy, clipped to ``clip`` (the data's range) when the model has one.

        Args:
            n: number of samples (may be left out when ``noise`` is given).
            seed: int seed of the starting noise; the same seed gives the same samples.
            batch_size: samples per network call.
            progress: a progress bar over the network calls (None: shown except under smoke).
            steps: ODE solver steps (Heun makes two network calls per step).
            solver: ``"euler"`` or ``"heun"``.
            labels: (n,) class labels, (n, condition_dim) conditions, a pair (context (n, L, context_dim),
                mask (n, L)) for a cross-attention model, or None (unconditional).
            guidance: classifier-free guidance weight (see ``predict_velocity``).
            noise: starting points x_1 (n, H, W, C); drawn from ``seed`` when None.
            use_ema: sample with the EMA weights (default) or the trained ones.
            compile: compile the network call (True), run eagerly (False), or decide by the number
                of calls (None: compile from 25 calls on).
        """
        batch_size = positive_int("batch_size", batch_size)
        solver = _util.choice("solver", solver, SOLVERS)
        steps = positive_int("steps", steps)
        noise, labels, v_fn = self._prepare(n, seed, labels, guidance, noise, use_ema, compile, steps, solver,
                                            batch_size)
        per_batch = steps * (2 if solver == "heun" else 1)
        calls = per_batch * math.ceil(len(noise) / batch_size)
        outs = []
        with _util.Progress(calls, enabled=progress, label=f"{solver} sampling") as bar:
            for start in range(0, len(noise), batch_size):
                rows = slice(start, start + batch_size)
                yb = None if labels is None else keras.tree.map_structure(
                    lambda a, rows=rows: ops.convert_to_tensor(a[rows]), labels)
                x = ode_sample(lambda x, t, y=yb: v_fn(x, t, y), noise[start: start + batch_size], steps, solver)
                out = ops.convert_to_numpy(x)
                outs.append(out if self.clip is None else np.clip(out, *self.clip))
                bar.update(bar.done + per_batch)
        return np.concatenate(outs)

    def trajectory(self, n: int | None = None, *, seed=None, steps: int = 16, solver: str = "euler", labels=None,
                   guidance: float = 1.0, noise=None, use_ema: bool = True):
        """The whole ODE path for a few samples: (x_0 (n, H, W, C), x at every grid time (steps + 1, n, ...))."""
        noise, labels, v_fn = self._prepare(n, seed, labels, guidance, noise, use_ema, False, steps, solver, 1)
        yb = None if labels is None else keras.tree.map_structure(ops.convert_to_tensor, labels)
        x0, xs = ode_sample(lambda x, t: v_fn(x, t, yb), noise, positive_int("steps", steps), solver,
                            return_trajectory=True)
        x0 = ops.convert_to_numpy(x0)
        return (x0 if self.clip is None else np.clip(x0, *self.clip)), xs

    def _prepare(self, n, seed, labels, guidance, noise, use_ema, compile, steps, solver, batch_size):
        # Check the arguments, draw the starting noise and pick the (compiled) velocity field.
        guidance = _util.number("guidance", guidance)
        if not self.built:
            self.build()
        if noise is None:
            noise = self.noise(n, seed)
        else:
            noise = np.asarray(noise, "float32")
            if n is not None and n != len(noise):
                raise ValueError(f"n ({n}) and the {len(noise)} starting points of noise disagree.")
        if tuple(noise.shape[1:]) != self.image_shape:
            raise ValueError(f"noise must have shape (n, {', '.join(map(str, self.image_shape))}), "
                             f"got {noise.shape}.")
        if labels is not None:
            if not self.conditional:
                raise ValueError("labels given, but the model was built without num_classes, condition_dim or "
                                 "context_dim.")
            if self.context_dim is not None:
                labels = self._check_context(labels)
            elif self.condition_dim is not None:
                labels = np.asarray(labels, "float32")
                if labels.ndim != 2 or labels.shape[1] != self.condition_dim:
                    raise ValueError(f"conditions must be shaped (n, {self.condition_dim}), got {labels.shape}.")
            else:
                labels = np.asarray(labels, "int32").reshape(-1)
            if len(labels[0] if self.context_dim is not None else labels) != len(noise):
                raise ValueError(f"{len(noise)} starting points but "
                                 f"{len(labels[0] if self.context_dim is not None else labels)} labels.")
        v_fn = lambda x, t, y: self.predict_velocity(x, t, y, guidance, use_ema)  # noqa: E731
        calls = steps * (2 if solver == "heun" else 1) * math.ceil(len(noise) / batch_size)
        if compile or (compile is None and calls >= 25):
            key = (use_ema, labels is not None, guidance)
            if key not in self._v_fns:
                net = self.ema_network if use_ema else self.network
                self._v_fns[key] = _util.compile_step(v_fn, state=net.variables)
            v_fn = self._v_fns[key]
        return noise, labels, v_fn

    def _check_context(self, labels):
        if not isinstance(labels, (tuple, list)) or len(labels) != 2:
            raise ValueError(f"a model with context_dim takes labels = (context (n, L, {self.context_dim}), "
                             f"mask (n, L)), got {type(labels).__name__}.")
        context, mask = np.asarray(labels[0], "float32"), np.asarray(labels[1]).astype(bool)
        if context.ndim != 3 or context.shape[-1] != self.context_dim or mask.shape != context.shape[:2]:
            raise ValueError(f"context must be (n, L, {self.context_dim}) and mask (n, L), got {context.shape} "
                             f"and {mask.shape}.")
        return context, mask

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "widths": list(self.network.widths),
                "blocks_per_level": self.network.blocks_per_level, "attention": self.network.attention,
                "num_classes": self.num_classes, "condition_dim": self.condition_dim,
                "time_sampling": self.time_sampling, "logit_mean": self.logit_mean, "logit_std": self.logit_std,
                "ema_decay": self.ema_decay, "label_dropout": self.label_dropout, "groups": self.network.groups,
                "clip": None if self.clip is None else list(self.clip), "seed": self.seed,
                "context_dim": self.context_dim, "context_heads": self.network.context_heads}


def reflow_pairs(model: FlowMatchingModel, n: int, *, steps: int = 32, solver: str = "heun", seed=None,
                 batch_size: int = 500, labels=None, progress=None):
    """(noise, samples) pairs from a trained model, for one round of rectification (reflow).

    Each pair is a starting point x_1 and where the model's ODE takes it. Training a model on
    these fixed couplings (``fit({"x0": samples, "noise": noise})``) makes its paths straighter,
    so fewer steps suffice (Liu et al. 2023). Returns (noise, samples), NumPy (n, H, W, C) each.
    """
    noise = model.noise(positive_int("n", n), seed)
    samples = model.generate(noise=noise, steps=steps, solver=solver, batch_size=batch_size, labels=labels,
                             progress=progress)
    return noise, samples
