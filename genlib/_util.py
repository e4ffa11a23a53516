"""The shared plumbing of genlib: argument checks, step compilation, gradients, progress.

This is the only module that may name a backend. Everything a family module needs that
differs between TensorFlow, JAX and PyTorch (compiling a step, a gradient with respect to
variables or inputs, a training step that updates two optimizers) is written here once,
so the family modules read as plain ``keras.ops`` code on every backend.
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

# ---------------------------------------------------------------------------
# Argument checks: each returns the cleaned value or raises a ValueError that says
# what was expected and what came.


def positive_int(name, value, minimum=1):
    """``value`` as an int, or a ValueError naming ``name`` if it is not an int >= ``minimum``.

    A bool is refused: ``True`` is an int to Python, never a layer count to a reader.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def optional_positive_int(name, value, minimum=1):
    """None, or ``positive_int(name, value, minimum)``."""
    return None if value is None else positive_int(name, value, minimum)


def number(name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float within [low, high] (open ends where asked); bools and NaN refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return value


def fraction(name, value, high=1.0, closed=False):
    """A probability-like number in [0, high) (or [0, high] with ``closed``)."""
    return number(name, value, 0.0, high, high_open=not closed)


def choice(name, value, options):
    """``value`` if it is one of ``options``, else a ValueError listing them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")
    return value


def shape(name, value, rank=None):
    """A tuple of positive ints (an image or sequence shape), of ``rank`` entries when given."""
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive ints, got {value!r}.") from None
    if rank is not None and len(out) != rank:
        raise ValueError(f"{name} must have {rank} entries, got {value!r}.")
    return tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(out))


def check_images(x, image_shape):
    """Raise a clear error unless ``x`` is a batch of images of ``image_shape`` (H, W, C)."""
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected images of shape (batch, {', '.join(map(str, image_shape))}), "
                         f"got {tuple(x.shape)}.")


# ---------------------------------------------------------------------------
# Compiling a step, and gradients, on every backend.


def gpu_available() -> bool:
    """True when the active Keras backend sees at least one GPU (a broken driver counts as none)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            from genlib import quiet_stderr

            with quiet_stderr():  # the CUDA probe logs an error line on GPU-less machines
                return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # a broken GPU driver means: no usable GPU
        return False
    return False


def deserialize(config, *keys):
    """A copy of a ``get_config`` dict with the sub-models under ``keys`` deserialized (for ``from_config``)."""
    config = dict(config)
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def _stateless_scope():
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope()


def compile_step(fn, state=()):
    """Compile a step function for the backend, so a Python loop of many calls pays no eager overhead.

    ``state``: the Keras variables ``fn`` reads or assigns (a model's weights, a seed
    generator, an optimizer's slots). TensorFlow and PyTorch use them in place. JAX's
    compiled functions are pure: their values go in as arguments (so later calls never see
    weights frozen at the first trace) and the new values come out and are written back.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, reduce_retracing=True)
        # Each call of compile_step makes a new function on purpose (one per model or sampler);
        # TF counts traces per code object and would warn that closures from one line "retrace".
        compiled._omit_frequent_tracing_warning = True
        return compiled
    if backend != "jax":
        return fn
    import jax

    state = list(state)
    if not state:
        return jax.jit(fn)

    def pure(values, args, kwargs):
        with keras.StatelessScope(state_mapping=list(zip(state, values))) as scope:
            out = fn(*args, **kwargs)
        return out, [scope.get_current_value(v) for v in state]

    jitted = jax.jit(pure)

    def call(*args, **kwargs):
        if _stateless_scope() is not None:  # already inside a traced step: run inline
            return fn(*args, **kwargs)
        out, new = jitted([v.value for v in state], args, kwargs)
        for v, value in zip(state, new):
            v.assign(value)
        return out

    return call


def _split_aux(result):
    return result if isinstance(result, tuple) and len(result) == 2 else (result, None)


def value_and_grad(fn, variables):
    """``(loss, aux, grads)``: ``fn()`` returns ``loss`` or ``(loss, aux)``; grads of loss w.r.t. ``variables``.

    The one way genlib takes a gradient with respect to Keras variables. Works eagerly, in a
    compiled step and in a ``TrainStepModel.training_step`` on every backend; variables
    that ``fn`` assigns (a seed generator, batch statistics) keep their new values.
    """
    variables = list(variables)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss, aux = _split_aux(fn())
        return loss, aux, tape.gradient(loss, variables)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            loss, aux = _split_aux(fn())
            params = [v.value for v in variables]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        return loss, aux, grads
    import jax

    outer = _stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    assigned = {}

    def pure(values):
        scope = _RecordingScope(assigned, state_mapping=list(zip(variables, values)))
        scope.state_mapping = {**base, **scope.state_mapping}  # the rest of the step's state, as the outer scope has it
        with scope:
            loss, aux = _split_aux(fn())
        return loss, (aux, {k: scope.state_mapping[k] for k in assigned})

    (loss, (aux, changed)), grads = jax.value_and_grad(pure, has_aux=True)([v.value for v in variables])
    ids = {id(v) for v in variables}
    for k, value in changed.items():
        if k not in ids:
            assigned[k].assign(value)  # into the outer scope if there is one, else in place
    return loss, aux, grads


class _RecordingScope(keras.StatelessScope):
    # A stateless scope that remembers which variables were assigned, so their new values
    # can leave a JAX transformation as outputs and be written where they belong.
    def __init__(self, assigned, **kwargs):
        super().__init__(**kwargs)
        self.assigned = assigned

    def add_update(self, update):
        self.assigned[id(update[0])] = update[0]
        super().add_update(update)


def input_gradient(fn, x):
    """``d sum(fn(x)) / dx``, differentiable again (a gradient penalty trains through it).

    For a per-example function, each example's gradient of its own output.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = keras.ops.sum(fn(x))
        return tape.gradient(out, x)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            x = keras.ops.convert_to_tensor(x)
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out = keras.ops.sum(fn(x))
            (g,) = torch.autograd.grad(out, x, create_graph=True)
        return g
    import jax

    return jax.grad(lambda v: keras.ops.sum(fn(v)))(keras.ops.convert_to_tensor(x))


@keras.saving.register_keras_serializable(package="genlib")
class TrainStepModel(keras.Model):
    """A model whose training step is written by hand, run by ``fit`` on every backend.

    Subclasses write ``training_step(data) -> dict of logs`` as plain stateful code: take
    gradients with ``value_and_grad``, update with ``optimizer.apply(grads, variables)``,
    update their metrics. It is what GANs (two optimizers) and EBMs (a sampler inside the
    step) need. TensorFlow and PyTorch run it as it is; under JAX, whose ``fit`` passes the
    model's state in and out explicitly, it runs inside a ``keras.StatelessScope`` that maps
    every variable to its value in that state and collects the new values.

    Extra optimizers: list them in ``compile(..., extra_optimizers=[...])`` wrapped by
    ``OptimizerGroup`` so that their slots travel with the state.
    """

    def train_step(self, *args):
        if keras.backend.backend() != "jax":
            (data,) = args
            return self.training_step(data)
        state, data = args
        groups = (self.trainable_variables, self.non_trainable_variables,
                  self.optimizer.variables if self.optimizer is not None else [], self.metrics_variables)
        mapping = [(v, value) for vs, values in zip(groups, state) for v, value in zip(vs, values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self.training_step(data)
        new_state = tuple([_current(scope, v, value) for v, value in zip(vs, values)]
                          for vs, values in zip(groups, state))
        return logs, new_state

    def training_step(self, data):
        raise NotImplementedError(f"{type(self).__name__} must define training_step(data).")


def _current(scope, v, value):
    new = scope.get_current_value(v)
    return value if new is None else new


class OptimizerGroup(keras.optimizers.Optimizer):
    """Several optimizers seen by ``fit`` as one, so that all their slots are part of the model's state.

    ``fit`` knows one optimizer (``model.optimizer``); a GAN has one per network. The group
    applies nothing itself: ``training_step`` calls each member's ``apply``. Its
    ``variables`` are the members' (in order), which is what JAX's ``fit`` threads through.
    """

    def __init__(self, optimizers, name="optimizer_group"):
        super().__init__(learning_rate=0.0, name=name)
        self.members = list(optimizers)

    def build(self, variables=None):
        self.built = True  # each member was built on its own network's variables

    @property
    def variables(self):
        return [v for opt in self.members for v in opt.variables]

    @property
    def iterations(self):
        return self.members[-1].iterations

    def apply(self, grads, trainable_variables=None):
        raise RuntimeError("an OptimizerGroup applies nothing; call a member's apply().")

    def finalize_variable_values(self, var_list):
        pass

    def get_config(self):
        return {"name": self.name}


# ---------------------------------------------------------------------------
# Progress for long loops that are not fit.


def static_output() -> bool:
    """True when output goes to a page that will be read later (a book build), not watched live.

    ``book/build.sh`` and ``.ci/run`` set ``GENLIB_STATIC_OUTPUT=1``: a static page prints
    every carriage-return update of a progress bar as its own line.
    """
    return os.environ.get("GENLIB_STATIC_OUTPUT", "") not in ("", "0")


def fit_verbose():
    """The ``verbose`` for ``fit``/``predict`` in a chapter (``genlib.training.verbose``).

    1 (a live bar) in a terminal, Jupyter or Colab; 0 under the ``smoke`` profile (CI) and in a
    built page (``static_output()``), where Keras' per-epoch lines (two per epoch, sixty for a
    30-epoch prior) would bury the figures: the page shows training through its curves, and
    ``training.fit_or_load_timed`` prints one line with the training time.
    """
    from genlib import profiles

    if profiles.active() == "smoke" or static_output():
        return 0
    return 1


class Progress:
    """A progress bar over ``total`` units for sampling, chains, evaluation.

    ``enabled=None`` means: shown, except under the ``smoke`` profile. Live in a terminal,
    Jupyter or Colab (a ``keras.utils.Progbar``); in a built page (``static_output()``) it
    prints one line, its final state, when it closes.
    """

    def __init__(self, total, *, enabled=None, unit="step", label=""):
        self.total = positive_int("total", total, 0)
        if enabled is None:
            from genlib import profiles

            enabled = profiles.active() != "smoke"
        self.enabled, self.unit, self.label = bool(enabled), unit, label
        self.done, self.values = 0, {}
        self._bar = None
        if self.enabled and not static_output():
            self._bar = keras.utils.Progbar(self.total, unit_name=unit)
        import time

        self._start = time.perf_counter()

    def update(self, done, values=None):
        """Mark ``done`` units finished (a running count); ``values``: a dict of numbers to show."""
        self.done = done
        if values:
            self.values = {k: float(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.update(done, values=list(self.values.items()) or None, finalize=False)

    def close(self):
        import time

        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self.done, values=list(self.values.items()) or None, finalize=True)
            return
        seconds = time.perf_counter() - self._start
        extra = "".join(f" - {k}: {v:.4g}" for k, v in self.values.items())
        label = f"{self.label}: " if self.label else ""
        print(f"{label}{self.done}/{self.total} {self.unit}s in {seconds:.1f} s{extra}", file=sys.stdout, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
