"""World models (Ha & Schmidhuber 2018): learn a simulator of an environment, then act inside it.

Three parts, each a model of its own:

* **V** (vision): a convolutional VAE (``genlib.vae``) that compresses a frame to a code ``z``.
* **M** (memory): ``MDNRNN``, an LSTM over ``[z_t, a_t]`` whose mixture-density head gives
  ``p(z_{t+1} | z_{<=t}, a_{<=t})`` as a mixture of Gaussians per latent dimension, plus the
  reward and the probability that the episode ends. Sampling from it with a temperature
  ``tau`` is "dreaming".
* **C** (controller): ``LinearController``, ``a_t = C([z_t, h_t])``, trained by CMA-ES
  (``cma_es``, on the ``cma`` package) either in the real environment (``evaluate_real``) or
  entirely in the dream (``evaluate_dream``; ``DreamEnv`` is the same dream as a Gymnasium env).

The environment is any Gymnasium environment turned into grey frames (``genlib.environments``:
``make_env(name)``, and ``collect_rollouts`` for episodes of a seeded random policy).
Real-environment rollouts step many environments in lockstep and encode their frames in one
batch; M's step during rollouts is NumPy (``MemoryStep``), thousands of tiny steps being much
cheaper without a framework call each (a test checks it equals the Keras model).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from genlib import _util
from genlib.distributions import LOG_2PI
from genlib.environments import _EnvBase, action_size, encode_actions, frame_size, gym, make_env, require

# ---------------------------------------------------------------------------
# M: the mixture-density network and its likelihood.


def mdn_nll(z, logit_pi, mu, log_sigma):
    """Negative log-likelihood of ``z`` under a mixture of K Gaussians per dimension, in nats.

    ``-log sum_k pi_k N(z; mu_k, sigma_k^2)`` with ``pi = softmax(logit_pi)``, computed as a
    ``logsumexp`` so that no density underflows. Shapes: z (..., d); logit_pi, mu, log_sigma
    (..., d, K) -> (..., d) (one value per dimension; sum over d for the vector's NLL).
    """
    z = ops.expand_dims(ops.convert_to_tensor(z, "float32"), -1)
    logit_pi, mu, log_sigma = (ops.convert_to_tensor(a, "float32") for a in (logit_pi, mu, log_sigma))
    log_pi = ops.log_softmax(logit_pi, axis=-1)
    log_normal = -0.5 * (ops.square((z - mu) * ops.exp(-log_sigma)) + LOG_2PI) - log_sigma
    return -ops.logsumexp(log_pi + log_normal, axis=-1)


def mdn_sample(logit_pi, mu, log_sigma, temperature: float = 1.0, rng=None) -> np.ndarray:
    """One draw per dimension from the mixture, at temperature ``tau`` (NumPy).

    ``tau`` sharpens (<1) or flattens (>1) the choice of component, ``softmax(logit_pi / tau)``,
    and scales each Gaussian's variance by ``tau`` (its sigma by sqrt(tau)), as Ha & Schmidhuber do:
    tau -> 0 gives the most likely component's mean, a deterministic dream.
    Shapes: (..., d, K) each -> (..., d).
    """
    temperature = _util.number("temperature", temperature, low=0.0, low_open=True)
    rng = np.random.default_rng(rng)
    logit_pi, mu, log_sigma = (np.asarray(ops.convert_to_numpy(a), "float64") for a in (logit_pi, mu, log_sigma))
    if not (logit_pi.shape == mu.shape == log_sigma.shape):
        raise ValueError(f"logit_pi, mu and log_sigma must have one shape (..., d, K), got "
                         f"{logit_pi.shape}, {mu.shape}, {log_sigma.shape}.")
    logits = logit_pi / temperature
    pi = np.exp(logits - logits.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    # Inverse-CDF draw of the component: one uniform per (..., d).
    u = rng.random(pi.shape[:-1] + (1,))
    k = np.minimum((np.cumsum(pi, -1) < u).sum(-1), pi.shape[-1] - 1)[..., None]
    mean = np.take_along_axis(mu, k, -1)[..., 0]
    sigma = np.exp(np.take_along_axis(log_sigma, k, -1)[..., 0]) * math.sqrt(temperature)
    return (mean + sigma * rng.standard_normal(mean.shape)).astype("float32")


@keras.saving.register_keras_serializable(package="genlib")
class MDNRNN(keras.Model):
    """M: an LSTM over [z_t, a_t] with a mixture-density head for z_{t+1}, the reward and "done".

    At each step the LSTM's output h_{t+1} gives, for each of the d latent dimensions, K mixture
    weights (logits), means and log-scales; and a predicted reward and a logit of the probability
    that the episode ends at step t+1.

    Args:
        latent_dim: d, the size of V's code.
        action_dim: size of the action vector (one-hot for discrete actions).
        units: LSTM width.
        num_mixtures: K components per dimension.
        reward_weight, done_weight: weights of the reward (squared error) and done (cross-entropy)
            terms in the loss, next to the z NLL (nats, summed over dimensions).
        min_log_sigma, max_log_sigma: the mixture's log-scales are clipped to this range.

    Shapes: inputs (batch, T, d + action_dim) -> dict of ``logit_pi``, ``mu``, ``log_sigma``
    (batch, T, d, K), ``reward`` and ``done_logit`` (batch, T).
    Training data (``fit(x, y)``): x = [z_t, a_t] (batch, T, d + a); y = [z_{t+1}, r_{t+1}, done_{t+1},
    mask] (batch, T, d + 3), mask 0 on padding after an episode's end.
    """

    def __init__(self, latent_dim: int, action_dim: int, units: int = 64, num_mixtures: int = 5,
                 reward_weight: float = 1.0, done_weight: float = 1.0, min_log_sigma: float = -5.0,
                 max_log_sigma: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _util.positive_int("latent_dim", latent_dim)
        self.action_dim = _util.positive_int("action_dim", action_dim)
        self.units = _util.positive_int("units", units)
        self.num_mixtures = _util.positive_int("num_mixtures", num_mixtures)
        self.reward_weight = _util.number("reward_weight", reward_weight, low=0.0)
        self.done_weight = _util.number("done_weight", done_weight, low=0.0)
        self.min_log_sigma = _util.number("min_log_sigma", min_log_sigma)
        self.max_log_sigma = _util.number("max_log_sigma", max_log_sigma, low=self.min_log_sigma, low_open=True)
        self.lstm = layers.LSTM(self.units, return_sequences=True, name="lstm")
        d, k = self.latent_dim, self.num_mixtures
        self.head = layers.Dense(3 * d * k + 2, name="mdn_head")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "z_nll", "reward_mse", "done_bce")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        width = self.latent_dim + self.action_dim
        self.lstm.build((None, None, width))
        self.head.build((None, self.units))
        self.built = True

    def _check(self, x, width, what):
        if len(x.shape) != 3 or x.shape[-1] != width:
            raise ValueError(f"{what} must have shape (batch, T, {width}), got {tuple(x.shape)}.")

    def split_head(self, out):
        """The head's raw output (..., 3dK + 2) as a dict of the mixture's parameters, reward, done logit."""
        d, k = self.latent_dim, self.num_mixtures
        lead = ops.shape(out)[:-1]
        mix = ops.reshape(out[..., : 3 * d * k], tuple(lead) + (d, 3 * k))
        return {"logit_pi": mix[..., :k], "mu": mix[..., k: 2 * k],
                "log_sigma": ops.clip(mix[..., 2 * k:], self.min_log_sigma, self.max_log_sigma),
                "reward": out[..., 3 * d * k], "done_logit": out[..., 3 * d * k + 1]}

    def call(self, inputs, training=False):
        inputs = ops.convert_to_tensor(inputs, "float32")
        self._check(inputs, self.latent_dim + self.action_dim, "inputs [z, a]")
        return self.split_head(self.head(self.lstm(inputs, training=training)))

    def losses_per_step(self, x, y, y_pred=None):
        """The three loss terms per step, each (batch, T), and the mask: (z_nll, reward_se, done_bce, mask)."""
        x, y = ops.convert_to_tensor(x, "float32"), ops.convert_to_tensor(y, "float32")
        self._check(y, self.latent_dim + 3, "targets [z_next, reward, done, mask]")
        out = self(x, training=True) if y_pred is None else y_pred
        d = self.latent_dim
        z_nll = ops.sum(mdn_nll(y[..., :d], out["logit_pi"], out["mu"], out["log_sigma"]), axis=-1)
        reward_se = ops.square(y[..., d] - out["reward"])
        logit, done = out["done_logit"], y[..., d + 1]
        # Cross-entropy from logits, written stably: max(l, 0) - l*y + log(1 + exp(-|l|)).
        done_bce = ops.maximum(logit, 0.0) - logit * done + ops.log1p(ops.exp(-ops.abs(logit)))
        return z_nll, reward_se, done_bce, y[..., d + 2]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        z_nll, reward_se, done_bce, mask = self.losses_per_step(x, y, y_pred)
        count = ops.maximum(ops.sum(mask), 1.0)
        terms = {name: ops.sum(v * mask) / count
                 for name, v in (("z_nll", z_nll), ("reward_mse", reward_se), ("done_bce", done_bce))}
        loss = terms["z_nll"] + self.reward_weight * terms["reward_mse"] + self.done_weight * terms["done_bce"]
        for name, value in (("loss", loss), *terms.items()):
            self.trackers[name].update_state(value)
        return loss

    def generate(self, n: int, *, seed=None, batch_size: int = 256, progress: bool | None = False,
                 initial_z=None, steps: int = 20, temperature: float = 1.0) -> np.ndarray:
        """Dream ``n`` latent sequences under uniformly random actions: NumPy (n, steps + 1, d).

        Args:
            n: number of sequences.
            seed: int or None; the same seed gives the same dreams.
            batch_size: sequences dreamed at once.
            progress: a progress bar over sequences (off by default).
            initial_z: (m, d) codes to start from (row i % m starts sequence i); None: zeros.
            steps: dreamed steps after the first code.
            temperature: tau of ``mdn_sample``.
        Decode the codes with V to see the dream.
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        steps = _util.positive_int("steps", steps)
        rng = np.random.default_rng(seed)
        start = np.zeros((1, self.latent_dim), "float32") if initial_z is None else np.asarray(initial_z, "float32")
        if start.ndim != 2 or start.shape[1] != self.latent_dim:
            raise ValueError(f"initial_z must have shape (m, {self.latent_dim}), got {start.shape}.")
        step = MemoryStep(self)
        out = []
        with _util.Progress(n, enabled=progress, unit="sequence", label="dreaming") as bar:
            for lo in range(0, n, batch_size):
                m = min(batch_size, n - lo)
                z = start[np.arange(lo, lo + m) % len(start)]
                state = step.initial_state(m)
                seq = [z]
                for _ in range(steps):
                    a = np.eye(self.action_dim, dtype="float32")[rng.integers(0, self.action_dim, m)]
                    head, state = step(z, a, state)
                    z = mdn_sample(head["logit_pi"], head["mu"], head["log_sigma"], temperature, rng)
                    seq.append(z)
                out.append(np.stack(seq, axis=1))
                bar.update(lo + m)
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "action_dim": self.action_dim,
                "units": self.units, "num_mixtures": self.num_mixtures, "reward_weight": self.reward_weight,
                "done_weight": self.done_weight, "min_log_sigma": self.min_log_sigma,
                "max_log_sigma": self.max_log_sigma}


def sequences(z, actions, rewards, terminated, length: int | None = None):
    """Episodes of codes and actions as M's padded training arrays ``(x, y)``.

    Args: per-episode lists: z (T+1, d) codes of the frames, actions (T, a), rewards (T,), terminated (T,).
    ``length``: steps per training sequence (longer episodes are cut into pieces; None: the longest episode).
    Returns x (N, length, d + a) = [z_t, a_t] and y (N, length, d + 3) = [z_{t+1}, r_{t+1}, done_{t+1}, mask].
    """
    if not (len(z) == len(actions) == len(rewards) == len(terminated)) or not len(z):
        raise ValueError("z, actions, rewards and terminated must be non-empty lists with one entry per episode.")
    longest = max(len(a) for a in actions)
    length = longest if length is None else _util.positive_int("length", length)
    xs, ys = [], []
    for zi, ai, ri, di in zip(z, actions, rewards, terminated):
        zi, ai = np.asarray(zi, "float32"), np.asarray(ai, "float32")
        if len(zi) != len(ai) + 1:
            raise ValueError(f"each episode needs one more code than actions, got {len(zi)} codes, {len(ai)} actions.")
        x = np.concatenate([zi[:-1], ai], axis=1)
        y = np.concatenate([zi[1:], np.asarray(ri, "float32")[:, None], np.asarray(di, "float32")[:, None],
                            np.ones((len(ai), 1), "float32")], axis=1)
        for lo in range(0, len(ai), length):
            xp, yp = x[lo: lo + length], y[lo: lo + length]
            pad = length - len(xp)
            xs.append(np.pad(xp, ((0, pad), (0, 0))))
            ys.append(np.pad(yp, ((0, pad), (0, 0))))
    return np.stack(xs), np.stack(ys)


def static_baseline_nll(z_train, z_test, min_log_sigma: float = -5.0):
    """NLL (nats per step, summed over d) of "z stays the same": z_{t+1} ~ N(z_t, diag(s^2)).

    ``s`` is fitted by maximum likelihood to the steps of ``z_train`` (the per-dimension root mean
    square of z_{t+1} - z_t); the NLL is averaged over the steps of ``z_test``. Both: lists of (T+1, d).
    """
    diffs = lambda zs: np.concatenate([np.diff(np.asarray(z, "float64"), axis=0) for z in zs])
    var = np.maximum(np.mean(diffs(z_train) ** 2, axis=0), math.exp(2 * min_log_sigma))
    d = diffs(z_test)
    return float(np.mean(np.sum(0.5 * (d**2 / var + np.log(var) + LOG_2PI), axis=1)))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


class MemoryStep:
    """One step of M in NumPy, from the trained weights: ``(z_t, a_t, state) -> (head, state')``.

    The same arithmetic as Keras's LSTM (gates i, f, c, o; sigmoid and tanh) and the same head,
    without a framework call per step. ``state`` is (h, c), each (batch, units); ``head`` is the dict
    of ``MDNRNN.split_head`` in NumPy (logit_pi, mu, log_sigma (batch, d, K); reward, done_logit (batch,)).
    Read the weights again (a new MemoryStep) after training M further.
    """

    def __init__(self, memory: MDNRNN):
        if not isinstance(memory, MDNRNN):
            raise ValueError(f"memory must be an MDNRNN, got {type(memory).__name__}.")
        if not memory.built:
            memory.build()
        self.memory = memory
        cell = memory.lstm.cell
        self.kernel, self.recurrent, self.bias = (np.asarray(ops.convert_to_numpy(w), "float64")
                                                  for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
        self.head_w = np.asarray(ops.convert_to_numpy(memory.head.kernel), "float64")
        self.head_b = np.asarray(ops.convert_to_numpy(memory.head.bias), "float64")
        self.units = memory.units

    def initial_state(self, batch: int):
        return np.zeros((batch, self.units)), np.zeros((batch, self.units))

    def __call__(self, z, a, state):
        h, c = state
        gates = np.concatenate([z, a], axis=1) @ self.kernel + h @ self.recurrent + self.bias
        i, f, g, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        m = self.memory
        d, k = m.latent_dim, m.num_mixtures
        out = h @ self.head_w + self.head_b
        mix = out[:, : 3 * d * k].reshape(-1, d, 3 * k)
        head = {"logit_pi": mix[..., :k], "mu": mix[..., k: 2 * k],
                "log_sigma": np.clip(mix[..., 2 * k:], m.min_log_sigma, m.max_log_sigma),
                "reward": out[:, 3 * d * k], "done_logit": out[:, 3 * d * k + 1]}
        return head, (h, c)


# ---------------------------------------------------------------------------
# C: the controller, and where it is evaluated.


class LinearController:
    """C: ``a = W [z, h] + b``, read as an action of ``action_space``; its parameters are one flat vector.

    Discrete(n): n scores, the action is their argmax (n = 2: one score, action 1 where it is > 0).
    Box: one output per action dimension through tanh, rescaled to the box's bounds.

    Args:
        feature_dim: size of [z, h] (latent_dim + units).
        action_space: the environment's action space.
    """

    def __init__(self, feature_dim: int, action_space):
        self.feature_dim = _util.positive_int("feature_dim", feature_dim)
        self.action_space = action_space
        self.discrete = hasattr(action_space, "n")
        if self.discrete:
            self.outputs = 1 if int(action_space.n) == 2 else int(action_space.n)
        else:
            self.outputs = action_size(action_space)
        self.num_params = (self.feature_dim + 1) * self.outputs

    def act(self, params, features) -> np.ndarray:
        """Actions for a batch: params (B, num_params), features (B, feature_dim) -> (B,) ints or (B, dim) floats."""
        params, features = np.asarray(params, "float64"), np.asarray(features, "float64")
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"params must have shape (batch, {self.num_params}), got {params.shape}.")
        if features.shape != (len(params), self.feature_dim):
            raise ValueError(f"features must have shape ({len(params)}, {self.feature_dim}), got {features.shape}.")
        w = params[:, : -self.outputs].reshape(-1, self.outputs, self.feature_dim)
        y = np.einsum("bof,bf->bo", w, features) + params[:, -self.outputs:]
        if self.discrete:
            return (y[:, 0] > 0).astype(int) if self.outputs == 1 else y.argmax(1)
        low, high = self.action_space.low.reshape(1, -1), self.action_space.high.reshape(1, -1)
        return (low + (np.tanh(y) + 1.0) * 0.5 * (high - low)).astype("float32")


def build_vision(frame_shape, latent_dim: int = 8, *, beta: float = 0.1, filters=(16, 32), dense_units: int = 64,
                 mean_intensity: float | None = None, seed=None):
    """V: ``genlib.vae``'s convolutional VAE, for frames of ``frame_shape`` (H, W, C) in [0, 1].

    ``beta`` weights the KL term (below 1: codes that carry the small moving objects of a mostly
    empty frame, instead of a collapsed posterior that draws the average frame).
    ``mean_intensity``: the data's mean pixel value; the decoder's output bias starts at its logit,
    so the first steps are not spent pushing a sigmoid from 0.5 towards an almost white background.
    Returns an uncompiled ``vae.VAE``; shapes: (batch, H, W, C) -> codes (batch, latent_dim).
    """
    from genlib import vae

    frame_shape = _util.shape("frame_shape", frame_shape, 3)
    decoder = vae.build_decoder(latent_dim, frame_shape, tuple(reversed(filters)), dense_units)
    if mean_intensity is not None:
        m = _util.number("mean_intensity", mean_intensity, 0.0, 1.0, low_open=True, high_open=True)
        bias = decoder.get_layer("mean").bias
        bias.assign(np.full(tuple(bias.shape), math.log(m / (1.0 - m)), "float32"))
    return vae.VAE(vae.build_encoder(frame_shape, latent_dim, filters, dense_units), decoder, beta=beta, seed=seed)


def encode_frames(vision, frames, batch_size: int = 256) -> np.ndarray:
    """V's posterior means of frames: (N, H, W, C) -> NumPy (N, d). ``vision``: a ``genlib.vae.VAE``."""
    frames = np.asarray(frames, "float32")
    batch_size = _util.positive_int("batch_size", batch_size)
    if tuple(frames.shape[1:]) != tuple(vision.image_shape):
        raise ValueError(f"frames must have shape (N, {', '.join(map(str, vision.image_shape))}), got {frames.shape}.")
    # predict_on_batch: one compiled call per batch, much cheaper than an eager call per rollout step.
    out = [np.asarray(vision.encoder.predict_on_batch(frames[i: i + batch_size])[0])
           for i in range(0, len(frames), batch_size)]
    return np.concatenate(out).astype("float32") if out else np.zeros((0, vision.latent_dim), "float32")


def evaluate_real(vision, memory, params, env_name: str = "CartPole-v1", *, episodes: int = 5, seed: int = 0,
                  size=(32, 64), max_steps: int | None = None, frame_skip: int = 1) -> np.ndarray:
    """Returns of controllers in the real environment: NumPy (P, episodes).

    Each of the P rows of ``params`` (P, num_params) plays ``episodes`` episodes; episode e starts from
    ``reset(seed=seed + e)`` for every controller (common random numbers make CMA-ES's ranking fairer).
    At each step: frame -> z (V's mean) -> a = C([z, h]) -> h' = M's LSTM(z, a, h). All P x episodes
    envs step in lockstep, and their frames are encoded in one batch.
    """
    episodes = _util.positive_int("episodes", episodes)
    seed = _util.positive_int("seed", seed, 0)
    step = MemoryStep(memory)
    params = np.atleast_2d(np.asarray(params, "float64"))
    n_ctrl = len(params)
    envs = _pooled_envs(env_name, frame_size(size), max_steps, frame_skip, n_ctrl * episodes)
    controller = LinearController(memory.latent_dim + memory.units, envs[0].action_space)
    theta = np.repeat(params, episodes, axis=0)
    frames = np.stack([env.reset(seed=seed + i % episodes)[0] for i, env in enumerate(envs)])
    h, c = step.initial_state(len(envs))
    returns = np.zeros(len(envs))
    alive = np.ones(len(envs), bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        z = encode_frames(vision, frames[idx])
        actions = controller.act(theta[idx], np.concatenate([z, h[idx]], axis=1))
        _, (h_new, c_new) = step(z, encode_actions(envs[0].action_space, actions), (h[idx], c[idx]))
        h[idx], c[idx] = h_new, c_new
        for j, i in enumerate(idx):
            frame, reward, terminated, truncated, _ = envs[i].step(actions[j])
            frames[i] = frame
            returns[i] += reward
            alive[i] = not (terminated or truncated)
    return returns.reshape(n_ctrl, episodes)


def evaluate_random(env_name: str = "CartPole-v1", *, episodes: int = 5, seed: int = 0, size=(32, 64),
                    max_steps: int | None = None, frame_skip: int = 1) -> np.ndarray:
    """Returns of the uniformly random policy on the episodes ``evaluate_real`` plays: NumPy (episodes,)."""
    episodes = _util.positive_int("episodes", episodes)
    seed = _util.positive_int("seed", seed, 0)
    env = _pooled_envs(env_name, frame_size(size), max_steps, frame_skip, 1)[0]
    returns = np.zeros(episodes)
    for e in range(episodes):
        env.reset(seed=seed + e)
        env.action_space.seed(seed + e)
        while True:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            returns[e] += reward
            if terminated or truncated:
                break
    return returns


_ENV_POOL: dict = {}


def _pooled_envs(name, size, max_steps, frame_skip, count):
    """``count`` envs made once and kept: a CMA-ES run resets the same envs thousands of times,
    and making one (and its first render) costs far more than resetting it."""
    pool = _ENV_POOL.setdefault((name, size, max_steps, frame_skip), [])
    while len(pool) < count:
        pool.append(make_env(name, size=size, max_steps=max_steps, frame_skip=frame_skip))
    return pool[:count]


def evaluate_dream(memory, params, initial_z, *, episodes: int = 8, seed: int = 0, temperature: float = 1.0,
                   max_steps: int = 200, action_space=None) -> np.ndarray:
    """Returns of controllers inside M's dream: NumPy (P, episodes).

    A dream starts from a real first code (row ``(seed + e) % len(initial_z)`` of ``initial_z`` for
    episode e) with h = 0; each step C acts on [z, h], M gives h' and the mixture for the next code,
    which is *sampled* at ``temperature``; the reward is M's prediction, and the episode ends with M's
    predicted probability of "done" (a Bernoulli draw) or after ``max_steps``. Seeded: the same seed
    gives the same dreams for the same controller. ``action_space``: the real env's (default Discrete(action_dim)).
    """
    episodes = _util.positive_int("episodes", episodes)
    seed = _util.positive_int("seed", seed, 0)
    max_steps = _util.positive_int("max_steps", max_steps)
    temperature = _util.number("temperature", temperature, low=0.0, low_open=True)
    initial_z = np.asarray(initial_z, "float32")
    if initial_z.ndim != 2 or initial_z.shape[1] != memory.latent_dim:
        raise ValueError(f"initial_z must have shape (m, {memory.latent_dim}), got {initial_z.shape}.")
    space = action_space if action_space is not None else _discrete(memory.action_dim)
    step = MemoryStep(memory)
    params = np.atleast_2d(np.asarray(params, "float64"))
    controller = LinearController(memory.latent_dim + memory.units, space)
    n = len(params) * episodes
    theta = np.repeat(params, episodes, axis=0)
    rng = np.random.default_rng(seed)
    z = initial_z[(seed + np.tile(np.arange(episodes), len(params))) % len(initial_z)]
    state = step.initial_state(n)
    returns, alive = np.zeros(n), np.ones(n, bool)
    for _ in range(max_steps):
        actions = controller.act(theta, np.concatenate([z, state[0]], axis=1))
        head, state = step(z, encode_actions(space, actions), state)
        # Every dream draws its randomness each step, alive or not, so one dream's draws never
        # depend on when the others end.
        z = mdn_sample(head["logit_pi"], head["mu"], head["log_sigma"], temperature, rng)
        done = rng.random(n) < _sigmoid(head["done_logit"])
        returns += alive * head["reward"]
        alive &= ~done
        if not alive.any():
            break
    return returns.reshape(len(params), episodes)


def dream_codes(memory, z0, actions, *, temperature: float = 1.0, seed=None) -> np.ndarray:
    """Dream one episode from a real first code under given actions: NumPy (T+1, d) codes.

    ``z0`` (d,) starts the dream, ``actions`` (T, action_dim) are fed in turn (e.g. the actions of a
    real episode, to put the dream next to what really happened); decode the codes with V to see it.
    """
    z = np.asarray(z0, "float32").reshape(1, -1)
    actions = np.asarray(actions, "float32")
    if z.shape[1] != memory.latent_dim or actions.ndim != 2 or actions.shape[1] != memory.action_dim:
        raise ValueError(f"expected z0 ({memory.latent_dim},) and actions (T, {memory.action_dim}), "
                         f"got {np.shape(z0)} and {actions.shape}.")
    rng = np.random.default_rng(seed)
    step = MemoryStep(memory)
    state, codes = step.initial_state(1), [z]
    for a in actions:
        head, state = step(z, a[None], state)
        z = mdn_sample(head["logit_pi"], head["mu"], head["log_sigma"], temperature, rng)
        codes.append(z)
    return np.concatenate(codes)


def _discrete(n):
    g = require("gymnasium")
    return g.spaces.Discrete(n)


class DreamEnv(_EnvBase):
    """M's dream as a Gymnasium environment: observations are C's features [z, h], float32 (d + units,).

    ``reset(seed=...)`` picks a real first code from ``initial_z`` and sets h = 0; ``step(action)``
    samples the next code from M at ``temperature``, returns M's predicted reward, and ends the episode
    with M's probability of "done" (``terminated``) or after ``max_steps`` (``truncated``).

    Args:
        memory: a trained ``MDNRNN``.
        initial_z: (m, d) codes of real first frames.
        action_space: the real environment's action space.
        temperature: tau of ``mdn_sample``.
        max_steps: truncation.
    """

    metadata = {"render_modes": []}

    def __init__(self, memory, initial_z, action_space, temperature: float = 1.0, max_steps: int = 200):
        require("gymnasium")
        self.step_fn = MemoryStep(memory)
        self.memory = memory
        self.initial_z = np.asarray(initial_z, "float32")
        if self.initial_z.ndim != 2 or self.initial_z.shape[1] != memory.latent_dim:
            raise ValueError(f"initial_z must have shape (m, {memory.latent_dim}), got {self.initial_z.shape}.")
        if action_size(action_space) != memory.action_dim:
            raise ValueError(f"action_space {action_space} does not match M's action_dim {memory.action_dim}.")
        self.temperature = _util.number("temperature", temperature, low=0.0, low_open=True)
        self.max_steps = _util.positive_int("max_steps", max_steps)
        self.action_space = action_space
        width = memory.latent_dim + memory.units
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self._z = self._state = None

    def _obs(self):
        return np.concatenate([self._z[0], self._state[0][0]]).astype("float32")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._z = self.initial_z[self.np_random.integers(len(self.initial_z))][None]
        self._state = self.step_fn.initial_state(1)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        if self._z is None:
            raise RuntimeError("call reset() before step().")
        a = encode_actions(self.action_space, np.asarray(action)[None])
        head, self._state = self.step_fn(self._z, a, self._state)
        self._z = mdn_sample(head["logit_pi"], head["mu"], head["log_sigma"], self.temperature, self.np_random)
        self._t += 1
        terminated = bool(self.np_random.random() < _sigmoid(head["done_logit"][0]))
        truncated = self._t >= self.max_steps
        return self._obs(), float(head["reward"][0]), terminated, truncated, {"done_probability":
                                                                           float(_sigmoid(head["done_logit"][0]))}


# ---------------------------------------------------------------------------
# CMA-ES.


def cma_es(objective, num_params: int, *, generations: int = 20, popsize: int = 16, sigma0: float = 0.5,
           seed: int = 0, progress: bool | None = None, label: str = "CMA-ES"):
    """Maximise ``objective`` with CMA-ES (Hansen's ``cma`` package), starting from zeros.

    ``objective(params)`` takes a (popsize, num_params) array and returns (popsize,) scores, higher
    better (CMA-ES itself minimises, so it is told ``-score``). Each generation samples ``popsize``
    candidates from N(m, sigma^2 C), scores them, and moves m, sigma and C towards the best.
    Returns ``(best, history)``: the best candidate seen (num_params,) and a dict of per-generation
    lists ``mean_score``, ``best_score``, ``sigma``.
    """
    num_params = _util.positive_int("num_params", num_params, 2)
    generations = _util.positive_int("generations", generations)
    popsize = _util.positive_int("popsize", popsize, 2)
    sigma0 = _util.number("sigma0", sigma0, low=0.0, low_open=True)
    seed = _util.positive_int("seed", seed, 0)
    if not callable(objective):
        raise ValueError(f"objective must be a function of a (popsize, num_params) array, got {objective!r}.")
    cma = require("cma")
    # cma's seed 0 means "from the clock": shift by one so that every seed we accept is reproducible.
    es = cma.CMAEvolutionStrategy(np.zeros(num_params), sigma0, {"popsize": popsize, "seed": seed + 1,
                                                                 "verbose": -9, "verb_disp": 0, "verb_log": 0})
    history = {"mean_score": [], "best_score": [], "sigma": []}
    best, best_score = np.zeros(num_params), -np.inf
    with _util.Progress(generations, enabled=progress, unit="generation", label=label) as bar:
        for g in range(generations):
            candidates = np.asarray(es.ask())
            scores = np.asarray(objective(candidates), "float64").reshape(-1)
            if scores.shape != (len(candidates),):
                raise ValueError(f"objective must return one score per candidate ({len(candidates)}), "
                                 f"got shape {scores.shape}.")
            es.tell(list(candidates), list(-scores))
            if scores.max() > best_score:
                best, best_score = candidates[scores.argmax()].copy(), float(scores.max())
            history["mean_score"].append(float(scores.mean()))
            history["best_score"].append(float(scores.max()))
            history["sigma"].append(float(es.sigma))
            bar.update(g + 1)
            bar.values = {"mean score": scores.mean(), "best score": best_score}  # the final line shows the last
    return best, history
