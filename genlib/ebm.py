"""Energy-based models: an energy network, Langevin sampling, a replay buffer, contrastive divergence.

Chapter 6 (chapters/06_ebm.ipynb). An energy-based model (EBM) assigns every input ``x`` a
scalar energy ``E(x)`` and defines the density ``p(x) = exp(-E(x)) / Z``. ``Z`` is
intractable, but neither sampling nor the gradient of the log-likelihood needs it:

* ``build_energy_net`` / ``build_mlp_energy``: a small convolutional energy network with
  smooth activations (swish) for images, and an MLP for 2-D toy data; both map a batch to
  (batch, 1) energies.
* ``energy_gradient``: ``dE/dx`` for every example of a batch (``_util.input_gradient``
  asks the backend, TensorFlow, JAX or PyTorch; the math around it goes through ``keras.ops``).
* ``LangevinSampler``: the update
  ``x <- x - (step_size / 2) * clip(dE/dx) + noise_scale * sqrt(step_size) * N(0, I)``,
  then clipping to ``value_range`` and clamping of known pixels (inpainting), from any start.
  With ``noise_scale = 1`` and a small ``step_size`` its stationary distribution is
  ``exp(-E)``; with ``noise_scale = s`` it is ``exp(-E / s**2)`` (temperature ``s**2``).
* ``ReplayBuffer``: past chain ends kept in a fixed-size store; each chain restarts from a
  stored sample, or with probability ``restart_prob`` from fresh uniform noise.
* ``EBM``: a model whose ``training_step`` runs short Langevin chains from the buffer and
  lowers the energy of data while raising that of the samples: persistent contrastive
  divergence (chains continued across updates) with short-run restarts from noise, not
  CD-k (whose chains start at the data),
  plus ``alpha * (E(data)^2 + E(samples)^2)`` so the energies stay near zero;
  ``generate(n)`` samples by Langevin chains from uniform noise.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import layers, ops

from genlib import _util


def _value_range(value_range):
    """None, or ``(low, high)`` as floats with low < high."""
    if value_range is None:
        return None
    if isinstance(value_range, str) or not hasattr(value_range, "__len__") or len(value_range) != 2:
        raise ValueError(f"value_range must be a (low, high) pair or None, got {value_range!r}.")
    low, high = (_util.number(f"value_range[{i}]", v) for i, v in enumerate(value_range))
    if not low < high:
        raise ValueError(f"value_range must have low < high, got {value_range!r}.")
    return (low, high)


# ---------------------------------------------------------------------------
# Energy networks


def build_energy_net(image_shape=(16, 16, 1), filters: int = 32, activation: str = "swish",
                     name: str = "energy_net") -> keras.Model:
    """A convolutional energy network: images (batch, H, W, C) -> energies (batch, 1).

    3×3 conv (``filters``) → 4×4 stride-2 conv (2·filters) → 4×4 stride-2 conv (2·filters)
    → flatten → dense 1. The activation must be smooth: Langevin dynamics follows the
    gradient of the energy with respect to the *input*, and a ReLU net's input gradient is
    piecewise constant and noisy. No batch normalisation: the energy of one image must not
    depend on the others in its batch.

    Args:
        image_shape: (H, W, C), H and W at least 4.
        filters: channels of the first conv; the strided ones have twice as many.
        activation: a smooth activation name (``"swish"``, ``"gelu"``, ``"softplus"``, ``"elu"``, ``"tanh"``).
    """
    image_shape = _util.shape("image_shape", image_shape, rank=3)
    if min(image_shape[:2]) < 4:
        raise ValueError(f"image_shape must be (H, W, C) with H, W >= 4, got {image_shape!r}.")
    filters = _util.positive_int("filters", filters)
    if activation in ("relu", "relu6", "hard_sigmoid", "hard_swish"):
        raise ValueError(f"activation must be smooth (swish, gelu, softplus, elu, tanh), got {activation!r}.")
    inputs = keras.Input(image_shape)
    h = layers.Conv2D(filters, 3, padding="same", activation=activation)(inputs)
    h = layers.Conv2D(2 * filters, 4, strides=2, padding="same", activation=activation)(h)
    h = layers.Conv2D(2 * filters, 4, strides=2, padding="same", activation=activation)(h)
    energy = layers.Dense(1, name="energy")(layers.Flatten()(h))
    return keras.Model(inputs, energy, name=name)


def build_mlp_energy(data_dim: int = 2, units: int = 64, depth: int = 3, activation: str = "swish",
                     name: str = "mlp_energy") -> keras.Model:
    """An MLP energy for toy data: points (batch, data_dim) -> energies (batch, 1)."""
    data_dim, units, depth = (_util.positive_int(n, v) for n, v in
                              (("data_dim", data_dim), ("units", units), ("depth", depth)))
    inputs = keras.Input((data_dim,))
    h = inputs
    for _ in range(depth):
        h = layers.Dense(units, activation=activation)(h)
    return keras.Model(inputs, layers.Dense(1, name="energy")(h), name=name)


def energy_gradient(energy_fn, x):
    """``dE/dx`` of shape ``x.shape``: each example's gradient of its own energy.

    ``energy_fn`` maps (batch, ...) to (batch,) or (batch, 1). Differentiating the sum of the
    energies is exact here because example ``i``'s energy does not depend on example ``j``.
    """
    return _util.input_gradient(energy_fn, x)


def _energy_variables(energy_fn, variables):
    # The Keras variables an energy reads: given, or those of a layer or of a layer's method
    # (``model.energy``). JAX needs them as inputs of the compiled chain.
    if variables is not None:
        return list(variables)
    owner = getattr(energy_fn, "__self__", energy_fn)
    return list(owner.variables) if isinstance(owner, keras.layers.Layer) else []


# ---------------------------------------------------------------------------
# Langevin dynamics


@keras.saving.register_keras_serializable(package="genlib")
class LangevinSampler:
    """Unadjusted Langevin dynamics on an energy ``E``, from any starting batch.

    One step, with ε = ``step_size`` and σ = ``noise_scale``::

        g      = clip(dE/dx(x_k), -grad_clip, grad_clip)        (elementwise; skipped if None)
        x_k+1  = x_k - (ε / 2) g + σ sqrt(ε) ξ,   ξ ~ N(0, I)
        x_k+1  = clip(x_k+1, *value_range)                     (skipped if None)
        x_k+1  = where(mask, x_0, x_k+1)                       (known pixels, if a mask is given)

    Without ``value_range``, for small ε the chain's stationary density is proportional to
    ``exp(-E(x) / σ²)``: the model's own density when σ = 1, a sharpened (low-temperature)
    one when σ < 1.

    Clipping to ``value_range`` is a projection, not a reflection: an overshooting
    coordinate lands exactly on the boundary, so the chain puts point masses on the faces
    of the box and, at a finite step, no longer targets ``exp(-E / σ²)`` restricted to it.

    Args:
        step_size: ε > 0.
        noise_scale: σ >= 0; 0 gives plain gradient descent on the energy.
        num_steps: default chain length.
        grad_clip: elementwise bound on the gradient (> 0), or None.
        value_range: (low, high) the states are clipped to, or None.
        seed: seed of the sampler's own noise (``run`` can take another generator).

    Shapes: ``run(energy_fn, x0)`` takes and returns (batch, ...) tensors of one shape.
    """

    def __init__(self, step_size: float = 10.0, noise_scale: float = 0.005, num_steps: int = 20,
                 grad_clip: float | None = 0.03, value_range=(0.0, 1.0), seed: int | None = None):
        self.step_size = _util.number("step_size", step_size, 0.0, low_open=True)
        self.noise_scale = _util.number("noise_scale", noise_scale, 0.0)
        self.num_steps = _util.positive_int("num_steps", num_steps, 0)
        self.grad_clip = None if grad_clip is None else _util.number("grad_clip", grad_clip, 0.0, low_open=True)
        self.value_range = _value_range(value_range)
        self.seed = _util.optional_positive_int("seed", seed, 0)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._compiled = {}  # (energy_fn, seed generator) -> compiled chain

    def step(self, energy_fn, x, x0=None, mask=None, seed=None):
        """One Langevin update of the batch ``x`` (see the class docstring); ``mask`` True = clamp to ``x0``."""
        # The chain is not differentiated through: each step's gradient is a number, not a graph.
        grad = ops.stop_gradient(energy_gradient(energy_fn, x))
        if self.grad_clip is not None:
            grad = ops.clip(grad, -self.grad_clip, self.grad_clip)
        x = x - 0.5 * self.step_size * grad
        if self.noise_scale > 0:
            noise = keras.random.normal(ops.shape(x), seed=seed or self.seed_generator, dtype=x.dtype)
            x = x + (self.noise_scale * self.step_size ** 0.5) * noise
        if self.value_range is not None:
            x = ops.clip(x, *self.value_range)
        if mask is not None:
            # After clipping, so the clamped values are exactly the given ones.
            x = ops.where(mask, x0, x)
        return x

    def run(self, energy_fn, x0, mask=None, num_steps: int | None = None, seed=None, variables=None):
        """Run ``num_steps`` (default ``self.num_steps``) updates from ``x0``; return the last state.

        Args:
            energy_fn: (batch, ...) -> (batch,) or (batch, 1) energies.
            x0: the starting batch (noise, buffer samples, a corrupted image...).
            mask: optional boolean, broadcastable to ``x0``: True where the value of ``x0``
                is known and must stay fixed (inpainting).
            num_steps: chain length; 0 returns ``x0``.
            seed: None (the sampler's own noise stream goes on), an int (the sampler's stream
                restarts from it: the same int gives the same chain), or a
                ``keras.random.SeedGenerator`` to draw the noise from.
            variables: the Keras variables ``energy_fn`` reads, when it is neither a Keras
                layer nor a layer's method (found by themselves then). JAX compiles the chain
                as a pure function of them; without them it would keep the values of the
                first call.

        The chain is compiled once per energy function and seed generator (``_util.compile_step``;
        the batch size and ``num_steps`` are arguments). Inside a training step it runs inline.
        """
        steps = self.num_steps if num_steps is None else _util.positive_int("num_steps", num_steps, 0)
        x0 = ops.convert_to_tensor(x0)
        if "float" not in keras.backend.standardize_dtype(x0.dtype):
            raise ValueError(f"x0 must be a float tensor, got dtype {x0.dtype}.")
        if mask is not None:
            mask = ops.convert_to_tensor(mask)
            if keras.backend.standardize_dtype(mask.dtype) != "bool":
                raise ValueError(f"mask must be boolean (True = known, clamped), got dtype {mask.dtype}.")
            mask = ops.broadcast_to(mask, ops.shape(x0))
        x = x0
        if mask is not None and self.value_range is not None:
            x = ops.where(mask, x0, ops.clip(x0, *self.value_range))
        if seed is None or not isinstance(seed, keras.random.SeedGenerator):
            if seed is not None:  # restart the own stream, as a fresh SeedGenerator(seed) would start
                fresh = keras.random.SeedGenerator(_util.positive_int("seed", seed, 0))
                self.seed_generator.state.assign(fresh.state.value)
            seed = self.seed_generator
        if steps == 0:
            return x
        key = (energy_fn, seed)
        if key not in self._compiled:
            state = {id(v): v for v in [*_energy_variables(energy_fn, variables), seed.state]}
            # A partial, not a lambda: TensorFlow counts traces per code object, and lambdas made on
            # one line for different energies would look like one function retracing over and over.
            self._compiled[key] = _util.compile_step(functools.partial(self._loop, energy_fn, seed),
                                                     state=state.values())
        return self._compiled[key](x, x0, mask, ops.convert_to_tensor(steps, "int32"))

    def _loop(self, energy_fn, seed, x, x0, mask, steps):
        # The seed generator's state travels in the loop's carry: a JAX loop body is a pure
        # function, so a draw inside it must take the state from the carry and hand the new one
        # back, or every step would reuse the first step's noise. (TensorFlow and PyTorch do not
        # need it, and do not mind.)
        def body(_, carry):
            x, seed_state = carry
            seed.state.assign(seed_state)
            return self.step(energy_fn, x, x0, mask, seed), seed.state.value

        x, seed_state = ops.fori_loop(0, steps, body, (x, seed.state.value))
        seed.state.assign(seed_state)
        return x

    def chain(self, energy_fn, x0, num_steps: int | None = None, keep_every: int = 10, mask=None,
              progress=None) -> np.ndarray:
        """The chain's states every ``keep_every`` steps, shape (1 + num_steps // keep_every, batch, ...).

        The first entry is ``x0``. ``progress``: show a progress bar (None: except under ``smoke``).
        """
        steps = self.num_steps if num_steps is None else _util.positive_int("num_steps", num_steps, 0)
        keep_every = _util.positive_int("keep_every", keep_every)
        x = ops.convert_to_tensor(x0)
        kept = [ops.convert_to_numpy(x)]
        with _util.Progress(steps, enabled=progress, label="Langevin chain") as bar:
            for done in range(keep_every, steps + 1, keep_every):
                # Each segment clamps to its own start, whose known pixels are those of x0.
                x = self.run(energy_fn, x, mask=mask, num_steps=keep_every)
                kept.append(ops.convert_to_numpy(x))
                bar.update(done)
        return np.stack(kept)

    def get_config(self):
        return {"step_size": self.step_size, "noise_scale": self.noise_scale, "num_steps": self.num_steps,
                "grad_clip": self.grad_clip, "value_range": self.value_range, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# ---------------------------------------------------------------------------
# Replay buffer


@keras.saving.register_keras_serializable(package="genlib")
class ReplayBuffer(keras.layers.Layer):
    """A fixed-size store of past chain ends, to restart Langevin chains from.

    Short chains from noise cannot reach the model's modes; chains that continue earlier
    chains effectively run much longer. ``sample(n)`` draws ``n`` stored samples at random
    and replaces each, with probability ``restart_prob``, by fresh uniform noise in
    ``value_range`` (so new modes keep being explored); ``update(indices, x)`` writes the
    chains' ends back where their starts came from, so the size never changes.

    Args:
        capacity: number of stored samples.
        restart_prob: probability that a chain starts from fresh noise, in [0, 1].
        value_range: (low, high) of the uniform noise (the buffer starts full of it).
        seed: seed of the draws.

    Built on the sample shape: ``build((None, *sample_shape))``. ``call(x)`` returns a batch
    of starting points with the batch size of ``x``.
    """

    def __init__(self, capacity: int = 1000, restart_prob: float = 0.05, value_range=(0.0, 1.0),
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity = _util.positive_int("capacity", capacity)
        self.restart_prob = _util.fraction("restart_prob", restart_prob, closed=True)
        self.value_range = _value_range(value_range)
        if self.value_range is None:
            raise ValueError("value_range is needed to draw the noise a chain restarts from.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.sample_shape = tuple(int(d) for d in input_shape[1:])
        low, high = self.value_range
        self.images = self.add_weight(
            shape=(self.capacity, *self.sample_shape), name="images", trainable=False,
            initializer=keras.initializers.RandomUniform(low, high, seed=self.seed))

    def noise(self, n):
        """``n`` fresh uniform samples, (n, *sample_shape)."""
        return keras.random.uniform((n, *self.sample_shape), *self.value_range, seed=self.seed_generator)

    def sample(self, n):
        """Starting points for ``n`` chains: ``(x0, indices, fresh)``.

        ``x0`` (n, *sample_shape); ``indices`` (n,) int32, the slots to write the chain ends
        back to; ``fresh`` (n,) bool, True where the chain restarts from noise.
        """
        indices = keras.random.randint((n,), 0, self.capacity, seed=self.seed_generator, dtype="int32")
        stored = ops.take(self.images, indices, axis=0)
        fresh = keras.random.uniform((n,), seed=self.seed_generator) < self.restart_prob
        where_fresh = ops.reshape(fresh, (-1,) + (1,) * len(self.sample_shape))
        return ops.where(where_fresh, self.noise(n), stored), indices, fresh

    def update(self, indices, x):
        """Store the batch ``x`` (n, *sample_shape) in the slots ``indices`` (n,)."""
        x = ops.cast(x, self.images.dtype)
        self.images.assign(ops.scatter_update(self.images, ops.reshape(indices, (-1, 1)), x))

    def call(self, x):
        return self.sample(ops.shape(x)[0])[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "capacity": self.capacity, "restart_prob": self.restart_prob,
                "value_range": self.value_range, "seed": self.seed}


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class EBM(_util.TrainStepModel):
    """An energy-based model trained by persistent contrastive divergence with Langevin samples.

    Each ``training_step`` on a data batch ``x+`` (batch, ...):

    1. starts chains from the replay buffer (persistent chains; a fraction ``restart_prob``
       from fresh noise, short-run chains), runs the sampler and writes the ends back:
       negative samples ``x-``, held fixed (no gradient). No chain starts at the data, as
       CD-k's would;
    2. minimises ``mean E(x+) - mean E(x-)`` (the negative log-likelihood's gradient:
       positive phase minus negative phase) ``+ alpha * (mean E(x+)^2 + mean E(x-)^2)``.

    Args:
        energy_net: a model mapping (batch, ...) to (batch, 1) energies (built).
        sampler: a ``LangevinSampler`` (or its config dict) for the negative samples; its
            ``value_range`` is the data's (the buffer's noise and the samples lie in it).
        buffer_size: replay buffer capacity.
        restart_prob: fraction of chains that restart from noise.
        alpha: weight of the energy-magnitude regulariser, >= 0.
        data_noise: std of Gaussian noise added to each data batch (smooths the data
            distribution, so its energy surface has usable gradients between images).
        seed: seed of the buffer and of the training chains' noise.

    ``call(x)`` returns energies (batch,). Metrics: ``loss``, ``cd`` (the contrastive
    term), ``reg``, ``e_data`` and ``e_sample`` (mean energies). ``generate(n)`` samples.
    """

    def __init__(self, energy_net, sampler=None, buffer_size: int = 1000, restart_prob: float = 0.05,
                 alpha: float = 0.1, data_noise: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(energy_net, keras.Model):
            raise ValueError(f"energy_net must be a keras Model, got {type(energy_net).__name__}.")
        if tuple(energy_net.outputs[0].shape[1:]) not in ((1,), ()):
            raise ValueError(f"energy_net must output one energy per example, (batch, 1); "
                             f"got {tuple(energy_net.outputs[0].shape)}.")
        if isinstance(sampler, dict):
            sampler = LangevinSampler.from_config(sampler)
        sampler = sampler or LangevinSampler()
        if not isinstance(sampler, LangevinSampler):
            raise ValueError(f"sampler must be a LangevinSampler or its config, got {type(sampler).__name__}.")
        self.energy_net, self.sampler = energy_net, sampler
        self.alpha = _util.number("alpha", alpha, 0.0)
        self.data_noise = _util.number("data_noise", data_noise, 0.0)
        self.seed = _util.optional_positive_int("seed", seed, 0)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.sample_shape = tuple(int(d) for d in energy_net.inputs[0].shape[1:])
        self.buffer = ReplayBuffer(buffer_size, restart_prob, sampler.value_range or (0.0, 1.0),
                                   seed=seed, name="buffer")
        self.buffer.build((None, *self.sample_shape))
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.built = True  # the energy net arrives built and the buffer is built above

    metric_names = ("loss", "cd", "reg", "e_data", "e_sample")

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_compile_config(self):
        return None  # the optimizer is chosen again after loading: a saved model is for sampling

    def energy(self, x, training=False):
        """Energies (batch,) of a batch (batch, ...)."""
        return ops.reshape(self.energy_net(x, training=training), (-1,))

    def call(self, inputs, training=False):
        return self.energy(inputs, training=training)

    def training_step(self, data):
        x_data = data[0] if isinstance(data, (tuple, list)) else data
        x_data = ops.convert_to_tensor(x_data)
        if self.data_noise > 0:
            x_data = x_data + self.data_noise * keras.random.normal(ops.shape(x_data), seed=self.seed_generator)
        # Negative samples: chains continued from the buffer, their ends written back. They are
        # constants for the update: points whose energy to raise, not a function to differentiate.
        x0, indices, _ = self.buffer.sample(ops.shape(x_data)[0])
        x_sample = ops.stop_gradient(self.sampler.run(self.energy, x0, seed=self.seed_generator))
        self.buffer.update(indices, x_sample)

        def loss_fn():
            e_data = self.energy(x_data, training=True)
            e_sample = self.energy(x_sample, training=True)
            cd = ops.mean(e_data) - ops.mean(e_sample)
            reg = self.alpha * (ops.mean(e_data ** 2) + ops.mean(e_sample ** 2))
            return cd + reg, (cd, reg, ops.mean(e_data), ops.mean(e_sample))

        variables = self.energy_net.trainable_variables
        loss, (cd, reg, e_data, e_sample), grads = _util.value_and_grad(loss_fn, variables)
        self.optimizer.apply(grads, variables)
        for name, value in zip(self.metric_names, (loss, cd, reg, e_data, e_sample)):
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}

    def langevin(self, x0, mask=None, num_steps: int | None = None, batch_size: int = 500, progress=None,
                 seed=None) -> np.ndarray:
        """Run the sampler on the energy from ``x0`` (N, ...) in batches; NumPy out, (N, ...).

        ``mask``: boolean, broadcastable to ``x0``, True where pixels are known (clamped).
        ``seed``: None continues the sampler's noise stream, an int restarts it (same int,
        same chains). ``progress``: a bar over the samples (None: shown except under ``smoke``).
        """
        x0 = np.asarray(x0, dtype="float32")
        if x0.shape[1:] != self.sample_shape:
            raise ValueError(f"x0 must have shape (N, *{self.sample_shape}), got {x0.shape}.")
        steps = self.sampler.num_steps if num_steps is None else _util.positive_int("num_steps", num_steps, 0)
        batch_size = _util.positive_int("batch_size", batch_size)
        out = []
        with _util.Progress(len(x0), enabled=progress, unit="sample", label="Langevin") as bar:
            for i in range(0, len(x0), batch_size):
                m = None if mask is None else np.broadcast_to(mask, x0.shape)[i: i + batch_size]
                x = self.sampler.run(self.energy, x0[i: i + batch_size], mask=m, num_steps=steps,
                                     seed=seed if i == 0 else None)  # the stream restarts once, then goes on
                out.append(ops.convert_to_numpy(x))
                bar.update(min(i + batch_size, len(x0)))
        return np.concatenate(out)

    def generate(self, n: int, *, seed: int | None = None, batch_size: int = 500, progress=None,
                 num_steps: int | None = None, return_start: bool = False):
        """``n`` samples: Langevin chains of ``num_steps`` (default: the sampler's) from uniform noise.

        Returns a float32 array (n, *sample_shape) in the data's value range, the sampler's
        ``value_range`` ([0, 1] for the book's images). ``seed`` fixes the starting noise and
        the chains' noise: the same seed gives the same samples. ``return_start``: return
        ``(x0, samples)``, the starts too.
        """
        n = _util.positive_int("n", n)
        seed = _util.optional_positive_int("seed", seed, 0)
        low, high = self.buffer.value_range
        x0 = np.random.default_rng(seed).uniform(low, high, (n, *self.sample_shape)).astype("float32")
        samples = self.langevin(x0, num_steps=num_steps, batch_size=batch_size, progress=progress, seed=seed)
        return (x0, samples) if return_start else samples

    def get_config(self):
        return {**super().get_config(), "energy_net": keras.saving.serialize_keras_object(self.energy_net),
                "sampler": self.sampler.get_config(), "buffer_size": self.buffer.capacity,
                "restart_prob": self.buffer.restart_prob, "alpha": self.alpha, "data_noise": self.data_noise,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**_util.deserialize(config, "energy_net"))
