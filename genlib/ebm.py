"""Energy-based models: an energy network, Langevin sampling, a replay buffer, contrastive divergence.

An energy-based model (EBM) assigns every input ``x`` a scalar energy ``E(x)`` and defines
the density ``p(x) = exp(-E(x)) / Z``. ``Z`` is intractable, but neither sampling nor the
gradient of the log-likelihood needs it:

* ``build_energy_net`` / ``build_mlp_energy``: a small convolutional energy network with
  smooth activations (swish) for images, and an MLP for 2-D toy data; both map a batch to
  (batch, 1) energies.
* ``energy_gradient``: ``dE/dx`` for every example of a batch (TensorFlow backend:
  ``tf.GradientTape``; the math around it goes through ``keras.ops``).
* ``LangevinSampler``: the update
  ``x <- x - (step_size / 2) * clip(dE/dx) + noise_scale * sqrt(step_size) * N(0, I)``,
  then clipping to ``value_range`` and clamping of known pixels (inpainting), from any start.
  With ``noise_scale = 1`` and a small ``step_size`` its stationary distribution is
  ``exp(-E)``; with ``noise_scale = s`` it is ``exp(-E / s**2)`` (temperature ``s**2``).
* ``ReplayBuffer``: past chain ends kept in a fixed-size store; each chain restarts from a
  stored sample, or with probability ``restart_prob`` from fresh uniform noise.
* ``EBM``: a model whose ``train_step`` runs short Langevin chains from the buffer and
  lowers the energy of data while raising that of the samples (contrastive divergence),
  plus ``alpha * (E(data)^2 + E(samples)^2)`` so the energies stay near zero.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib._util import positive_int as _positive_int


def _non_negative(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0{' or None' if allow_none else ''}, got {value!r}.")
    return float(value)


def _value_range(value_range):
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a (low, high) pair or None, got {value_range!r}.") from None
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
    if len(image_shape) != 3 or min(image_shape[:2]) < 4:
        raise ValueError(f"image_shape must be (H, W, C) with H, W >= 4, got {image_shape!r}.")
    filters = _positive_int("filters", filters)
    if activation in ("relu", "relu6", "hard_sigmoid", "hard_swish"):
        raise ValueError(f"activation must be smooth (swish, gelu, softplus, elu, tanh), got {activation!r}.")
    inputs = keras.Input(tuple(image_shape))
    h = layers.Conv2D(filters, 3, padding="same", activation=activation)(inputs)
    h = layers.Conv2D(2 * filters, 4, strides=2, padding="same", activation=activation)(h)
    h = layers.Conv2D(2 * filters, 4, strides=2, padding="same", activation=activation)(h)
    energy = layers.Dense(1, name="energy")(layers.Flatten()(h))
    return keras.Model(inputs, energy, name=name)


def build_mlp_energy(data_dim: int = 2, units: int = 64, depth: int = 3, activation: str = "swish",
                     name: str = "mlp_energy") -> keras.Model:
    """An MLP energy for toy data: points (batch, data_dim) -> energies (batch, 1)."""
    data_dim, units, depth = (_positive_int(n, v) for n, v in
                              (("data_dim", data_dim), ("units", units), ("depth", depth)))
    inputs = keras.Input((data_dim,))
    h = inputs
    for _ in range(depth):
        h = layers.Dense(units, activation=activation)(h)
    return keras.Model(inputs, layers.Dense(1, name="energy")(h), name=name)


def energy_gradient(energy_fn, x):
    """``dE/dx`` of shape ``x.shape``: each example's gradient of its own energy.

    ``energy_fn`` maps (batch, ...) to (batch,) or (batch, 1). Summing the energies before
    differentiating is exact here because example ``i``'s energy does not depend on example ``j``.
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("energy_gradient is written for the TensorFlow backend (tf.GradientTape).")
    import tensorflow as tf

    x = ops.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = ops.sum(energy_fn(x))
    return tape.gradient(total, x)


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

    For small ε the chain's stationary density is proportional to ``exp(-E(x) / σ²)``: the
    model's own density when σ = 1, a sharpened (low-temperature) one when σ < 1.

    Args:
        step_size: ε > 0.
        noise_scale: σ >= 0; 0 gives plain gradient descent on the energy.
        num_steps: default chain length.
        grad_clip: elementwise bound on the gradient, or None.
        value_range: (low, high) the states are clipped to, or None.
        seed: seed of the sampler's own noise (``run`` can take another generator).

    Shapes: ``run(energy_fn, x0)`` takes and returns (batch, ...) tensors of one shape.
    """

    def __init__(self, step_size: float = 10.0, noise_scale: float = 0.005, num_steps: int = 20,
                 grad_clip: float | None = 0.03, value_range=(0.0, 1.0), seed: int | None = None):
        self.step_size = _non_negative("step_size", step_size)
        if self.step_size == 0:
            raise ValueError("step_size must be > 0, got 0.")
        self.noise_scale = _non_negative("noise_scale", noise_scale)
        self.num_steps = _positive_int("num_steps", num_steps, 0)
        self.grad_clip = _non_negative("grad_clip", grad_clip, allow_none=True)
        if self.grad_clip == 0:
            raise ValueError("grad_clip must be > 0 or None, got 0.")
        self.value_range = _value_range(value_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._compiled = {}  # (energy_fn, steps, ...) -> traced loop

    def step(self, energy_fn, x, x0=None, mask=None, seed=None):
        """One Langevin update of the batch ``x`` (see the class docstring); ``mask`` True = clamp to ``x0``."""
        grad = energy_gradient(energy_fn, x)
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

    def run(self, energy_fn, x0, mask=None, num_steps: int | None = None, seed=None):
        """Run ``num_steps`` (default ``self.num_steps``) updates from ``x0``; return the last state.

        Args:
            energy_fn: (batch, ...) -> (batch,) or (batch, 1) energies.
            x0: the starting batch (noise, buffer samples, a corrupted image...).
            mask: optional boolean, broadcastable to ``x0``: True where the value of ``x0``
                is known and must stay fixed (inpainting).
            num_steps: chain length; 0 returns ``x0``.
            seed: a ``keras.random.SeedGenerator`` to draw the noise from instead of the sampler's.

        Works eagerly and inside a traced ``train_step`` (``ops.fori_loop``).
        """
        steps = self.num_steps if num_steps is None else _positive_int("num_steps", num_steps, 0)
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
        if steps == 0:
            return x
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.executing_eagerly():
                # Eagerly, the loop pays Python per step (~10x slower), so it runs as a graph:
                # one trace per energy function, sample shape and masking: the batch size and the
                # number of steps are arguments of the graph.
                shape = tuple(x0.shape[1:])
                key = (energy_fn, mask is None, seed, shape)
                if key not in self._compiled:
                    spec, k = tf.TensorSpec((None, *shape), x0.dtype), tf.TensorSpec((), "int32")
                    if mask is None:
                        fn = tf.function(lambda x, x0, k: self._loop(energy_fn, x, x0, None, k, seed),
                                         input_signature=[spec, spec, k])
                    else:
                        fn = tf.function(lambda x, x0, k, m: self._loop(energy_fn, x, x0, m, k, seed),
                                         input_signature=[spec, spec, k, tf.TensorSpec((None, *shape), "bool")])
                    # A new energy is a new graph by design, not accidental retracing: no warning.
                    fn._omit_frequent_tracing_warning = True
                    self._compiled[key] = fn
                args = (x, x0, tf.constant(steps, "int32")) + (() if mask is None else (mask,))
                return self._compiled[key](*args)
        return self._loop(energy_fn, x, x0, mask, steps, seed)

    def _loop(self, energy_fn, x, x0, mask, steps, seed):
        return ops.fori_loop(0, steps, lambda _, x: self.step(energy_fn, x, x0, mask, seed), x)

    def chain(self, energy_fn, x0, num_steps: int | None = None, keep_every: int = 10, mask=None,
              progress: bool = False) -> np.ndarray:
        """The chain's states every ``keep_every`` steps, shape (1 + num_steps // keep_every, batch, ...).

        The first entry is ``x0``. ``progress`` shows a ``keras.utils.Progbar``.
        """
        steps = self.num_steps if num_steps is None else _positive_int("num_steps", num_steps, 0)
        keep_every = _positive_int("keep_every", keep_every)
        x = ops.convert_to_tensor(x0)
        kept = [ops.convert_to_numpy(x)]
        bar = keras.utils.Progbar(steps) if progress else None
        for done in range(keep_every, steps + 1, keep_every):
            # Each segment clamps to its own start, whose known pixels are those of x0.
            x = self.run(energy_fn, x, mask=mask, num_steps=keep_every)
            kept.append(ops.convert_to_numpy(x))
            if bar is not None:
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
        self.capacity = _positive_int("capacity", capacity)
        if not 0.0 <= restart_prob <= 1.0:
            raise ValueError(f"restart_prob must lie in [0, 1], got {restart_prob!r}.")
        self.restart_prob = float(restart_prob)
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
class EBM(keras.Model):
    """An energy-based model trained by contrastive divergence with Langevin samples.

    Each ``train_step`` on a data batch ``x+`` (batch, ...):

    1. starts chains from the replay buffer (a fraction from fresh noise), runs the sampler
       and writes the ends back: negative samples ``x-``, held fixed (no gradient);
    2. minimises ``mean E(x+) - mean E(x-)`` (the negative log-likelihood's gradient:
       positive phase minus negative phase) ``+ alpha * (mean E(x+)^2 + mean E(x-)^2)``.

    Args:
        energy_net: a model mapping (batch, ...) to (batch, 1) energies (built).
        sampler: a ``LangevinSampler`` (or its config dict) for the negative samples.
        buffer_size: replay buffer capacity.
        restart_prob: fraction of chains that restart from noise.
        alpha: weight of the energy-magnitude regulariser.
        data_noise: std of Gaussian noise added to each data batch (smooths the data
            distribution, so its energy surface has usable gradients between images).
        seed: seed of the buffer and of the chains' noise.

    ``call(x)`` returns energies (batch,). Metrics: ``loss``, ``cd`` (the contrastive
    term), ``reg``, ``e_data`` and ``e_sample`` (mean energies).
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
        self.alpha = _non_negative("alpha", alpha)
        self.data_noise = _non_negative("data_noise", data_noise)
        self.seed = seed
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

    def train_step(self, data):
        import tensorflow as tf

        x_data = data[0] if isinstance(data, (tuple, list)) else data
        x_data = ops.convert_to_tensor(x_data)
        n = ops.shape(x_data)[0]
        if self.data_noise > 0:
            x_data = x_data + self.data_noise * keras.random.normal(ops.shape(x_data), seed=self.seed_generator)
        x0, indices, _ = self.buffer.sample(n)
        x_sample = ops.stop_gradient(self.sampler.run(self.energy, x0, seed=self.seed_generator))
        self.buffer.update(indices, x_sample)
        with tf.GradientTape() as tape:
            e_data = self.energy(x_data, training=True)
            e_sample = self.energy(x_sample, training=True)
            cd = ops.mean(e_data) - ops.mean(e_sample)
            reg = self.alpha * (ops.mean(e_data ** 2) + ops.mean(e_sample ** 2))
            loss = cd + reg
        variables = self.energy_net.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        for name, value in zip(self.metric_names, (loss, cd, reg, ops.mean(e_data), ops.mean(e_sample))):
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}

    def test_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        self.trackers["e_data"].update_state(ops.mean(self.energy(x)))
        return {"e_data": self.trackers["e_data"].result()}

    def langevin(self, x0, mask=None, num_steps: int | None = None, batch_size: int = 500,
                 progress: bool = False) -> np.ndarray:
        """Run the sampler on the energy from ``x0`` (N, ...) in batches; NumPy out.

        ``mask``: boolean, broadcastable to ``x0``, True where pixels are known (clamped).
        ``progress`` shows a ``keras.utils.Progbar`` over the batches.
        """
        x0 = np.asarray(x0, dtype="float32")
        if x0.shape[1:] != self.sample_shape:
            raise ValueError(f"x0 must have shape (N, *{self.sample_shape}), got {x0.shape}.")
        steps = self.sampler.num_steps if num_steps is None else _positive_int("num_steps", num_steps, 0)
        out = []
        bar = keras.utils.Progbar(len(x0)) if progress else None
        for i in range(0, len(x0), batch_size):
            m = None if mask is None else np.broadcast_to(mask, x0.shape)[i: i + batch_size]
            out.append(ops.convert_to_numpy(self.sampler.run(self.energy, x0[i: i + batch_size], mask=m,
                                                             num_steps=steps, seed=self.seed_generator)))
            if bar is not None:
                bar.update(min(i + batch_size, len(x0)))
        return np.concatenate(out)

    def generate(self, n: int, num_steps: int | None = None, seed: int = 0, batch_size: int = 500,
                 progress: bool = False):
        """``n`` samples: Langevin chains of ``num_steps`` from uniform noise. Returns (x0, samples)."""
        n = _positive_int("n", n)
        low, high = self.buffer.value_range
        x0 = np.random.default_rng(seed).uniform(low, high, (n, *self.sample_shape)).astype("float32")
        return x0, self.langevin(x0, num_steps=num_steps, batch_size=batch_size, progress=progress)

    def get_config(self):
        return {**super().get_config(), "energy_net": keras.saving.serialize_keras_object(self.energy_net),
                "sampler": self.sampler.get_config(), "buffer_size": self.buffer.capacity,
                "restart_prob": self.buffer.restart_prob, "alpha": self.alpha, "data_noise": self.data_noise,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["energy_net"] = keras.saving.deserialize_keras_object(config["energy_net"])
        return cls(**config)
