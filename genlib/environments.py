"""Gymnasium environments as a world model sees them: grey pixel frames, and rollouts of a random policy.

Chapter 15 (chapters/15_world_models.ipynb); the models are in ``genlib.world_model``.

* ``make_env(name, size)``: any Gymnasium environment whose observations are small grey frames
  (``PixelObservation``, cropped to where the action happens and area-resized).
* ``collect_rollouts``: episodes of a seeded random policy, stepped in lockstep.
* ``require``: import ``gymnasium`` or ``cma``, or say in one message how to install them.
"""

from __future__ import annotations

import os

import numpy as np

from genlib import _util

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # render without a display (CI, Colab)
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

try:
    import gymnasium as gym
except ImportError:  # the chapter's environments need it; the math and M do not
    gym = None

INSTALL_HINT = 'pip install "gymnasium[classic-control]>=1.0" cma  (CarRacing also needs "gymnasium[box2d]")'
_EnvBase = gym.Env if gym is not None else object


def require(package: str):
    """Import ``package`` ("gymnasium" or "cma"), or raise one ImportError that says how to install it."""
    _util.choice("package", package, ("gymnasium", "cma"))
    try:
        import importlib

        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"genlib's world models need the {package!r} package, which is not installed. "
                          f"Install it with: {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------
# The environment as frames.

# Where the action happens in each environment's rendering (rows, columns), so that a small
# frame keeps the details that matter (CartPole's 10-pixel pole). Other environments: whole frame.
CROPS = {"CartPole-v1": (slice(100, 356), slice(12, 588))}


def area_resize(image, height: int, width: int) -> np.ndarray:
    """Shrink a (H, W) or (H, W, C) array to (height, width[, C]) by averaging the pixels of each cell."""
    image = np.asarray(image, dtype="float32")
    if image.ndim not in (2, 3) or image.shape[0] < height or image.shape[1] < width:
        raise ValueError(f"expected an image (H, W[, C]) at least {height}x{width}, got shape {image.shape}.")
    rows = np.linspace(0, image.shape[0], height + 1).astype(int)
    cols = np.linspace(0, image.shape[1], width + 1).astype(int)
    out = np.add.reduceat(np.add.reduceat(image, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.diff(rows)[:, None] * np.diff(cols)[None, :]
    return out / (counts if image.ndim == 2 else counts[..., None])


class PixelObservation(_EnvBase):
    """A Gymnasium env whose observations are its frames, grey and small: (height, width, 1) float32 in [0, 1].

    Frames come from ``env.render()`` (classic-control envs, ``render_mode="rgb_array"``) or, when the
    wrapped env already observes pixels (CarRacing), from its observation. Everything else (actions,
    rewards, seeding) is the wrapped env's.

    Args:
        env: a Gymnasium env.
        size: (height, width) of the frame, or one int for a square.
        crop: (row slice, column slice) of the full frame to keep before shrinking (None: all).
        frame_skip: each action is repeated this many times (rewards summed) and one frame is
            returned: a step then changes the frame visibly, and costs one render, not k.
    """

    def __init__(self, env, size=(32, 64), crop=None, frame_skip: int = 1):
        require("gymnasium")
        self.env = env
        self.frame_skip = _util.positive_int("frame_skip", frame_skip)
        self.size = frame_size(size)
        self.crop = crop
        self.action_space = env.action_space
        self.observation_space = gym.spaces.Box(0.0, 1.0, self.size + (1,), np.float32)
        self.from_render = not (isinstance(env.observation_space, gym.spaces.Box)
                                and len(env.observation_space.shape) == 3)
        self.metadata = getattr(env, "metadata", {})

    def _frame(self, obs):
        rgb = self.env.render() if self.from_render else obs
        rgb = np.asarray(rgb, dtype="float32")
        if self.crop is not None:
            rgb = rgb[self.crop[0], self.crop[1]]
        grey = rgb.mean(axis=-1) / 255.0
        return area_resize(grey, *self.size)[..., None].astype("float32")

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._frame(obs), info

    def step(self, action):
        total = 0.0
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return self._frame(obs), total, bool(terminated), bool(truncated), info

    def close(self):
        self.env.close()


def frame_size(size) -> tuple:
    """``size`` as (height, width): an int n means (n, n)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    return _util.shape("size (height, width)", size, 2)


def make_env(name: str = "CartPole-v1", size=(32, 64), max_steps: int | None = None, frame_skip: int = 1):
    """``gymnasium.make(name)`` observed as small grey frames (``PixelObservation``).

    ``size``: (height, width) of the frames (one int: square); ``max_steps``: truncate episodes after
    this many of the env's own steps (None: the env's own limit); ``frame_skip``: see ``PixelObservation``.
    """
    g = require("gymnasium")
    size = frame_size(size)
    max_steps = _util.optional_positive_int("max_steps", max_steps)
    kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}
    env = g.make(name, render_mode="rgb_array", **kwargs)
    return PixelObservation(env, size=size, crop=CROPS.get(name), frame_skip=frame_skip)


def action_size(space) -> int:
    """Width of the action vector M reads: n for ``Discrete(n)`` (one-hot), the length for a ``Box``."""
    if hasattr(space, "n"):
        return int(space.n)
    if getattr(space, "shape", None):
        return int(np.prod(space.shape))
    raise ValueError(f"unsupported action space {space!r}: expected Discrete or Box.")


def encode_actions(space, actions) -> np.ndarray:
    """Actions as the vectors M reads: one-hot for ``Discrete``, float for ``Box``: (N, action_size)."""
    actions = np.asarray(actions)
    if hasattr(space, "n"):
        return np.eye(int(space.n), dtype="float32")[actions.astype(int).reshape(-1)]
    return actions.reshape(len(actions), -1).astype("float32")


def collect_rollouts(env_name: str = "CartPole-v1", episodes: int = 10, *, seed: int = 0, size=(32, 64),
                     max_steps: int | None = None, frame_skip: int = 1, progress: bool | None = None) -> dict:
    """Play ``episodes`` episodes with a uniformly random policy; the same seed gives the same data.

    Episode ``i`` resets the env with seed ``seed + i`` and samples actions from the action space
    seeded with ``seed + i``. Returns a dict of per-episode lists:
    ``frames`` (T+1, height, width, 1) float32 in [0, 1] (the first frame and one after each step),
    ``actions`` (T, action_size) float32 (one-hot for discrete actions),
    ``rewards`` (T,) float32, ``terminated`` (T,) float32 (1 where the episode ended by failure or goal),
    and ``action_space``.
    """
    episodes = _util.positive_int("episodes", episodes)
    seed = _util.positive_int("seed", seed, 0)
    env = make_env(env_name, size=size, max_steps=max_steps, frame_skip=frame_skip)
    out = {"frames": [], "actions": [], "rewards": [], "terminated": [], "action_space": env.action_space}
    steps = 0
    with _util.Progress(episodes, enabled=progress, unit="episode", label="random rollouts") as bar:
        for i in range(episodes):
            frame, _ = env.reset(seed=seed + i)
            env.action_space.seed(seed + i)
            frames, actions, rewards, ends = [frame], [], [], []
            while True:
                action = env.action_space.sample()
                frame, reward, terminated, truncated, _ = env.step(action)
                frames.append(frame)
                actions.append(action)
                rewards.append(reward)
                ends.append(float(terminated))
                if terminated or truncated:
                    break
            out["frames"].append(np.stack(frames))
            out["actions"].append(encode_actions(env.action_space, actions))
            out["rewards"].append(np.asarray(rewards, "float32"))
            out["terminated"].append(np.asarray(ends, "float32"))
            steps += len(actions)
            bar.update(i + 1)
    env.close()
    return out
