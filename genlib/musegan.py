"""MuseGAN in miniature: a multi-track WGAN-GP whose generator splits its noise into shared and private latents.

Chapter 14 (chapters/14_music.ipynb). The data are ``genlib.music``'s multi-track piano rolls
(bars x steps x pitches x tracks, one-hot over pitch) cut from the Bach chorales.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib import _util, gan
from genlib.music import ROLL_LOWEST, VOICE_RANGES, VOICES, Chorales, sounding_pitches

# ---------------------------------------------------------------------------
# MuseGAN: a multi-track GAN with shared and private latents


def roll_windows(chorales: Chorales, bars: int = 2, hop_bars: int = 1, steps_per_bar: int = 16) -> np.ndarray:
    """Every ``bars``-bar stretch, starting on a downbeat every ``hop_bars`` bars, of the chorales
    in the matching metre (``steps_per_bar``) in which all four voices sing throughout.

    Returns an int array (N, bars * steps_per_bar, 4): the MIDI pitch each voice sounds at each step.
    """
    out = []
    for notes, spb, downbeat in zip(chorales.notes, chorales.steps_per_bar, chorales.first_downbeat):
        if spb != steps_per_bar:
            continue
        pitch = sounding_pitches(notes)
        for start in range(downbeat, len(pitch) - bars * steps_per_bar + 1, hop_bars * steps_per_bar):
            window = pitch[start: start + bars * steps_per_bar]
            if (window >= 0).all():
                out.append(window)
    return np.array(out, dtype=np.int64).reshape(-1, bars * steps_per_bar, len(VOICES))


def pitches_to_roll(windows, bars: int, lowest: int = ROLL_LOWEST, num_pitches: int = 48) -> np.ndarray:
    """One-hot piano rolls (N, bars, steps, num_pitches, 4), float32, of pitch windows (N, T, 4) (``roll_windows``)."""
    windows = np.asarray(windows)
    index = windows - lowest
    if index.min() < 0 or index.max() >= num_pitches:
        raise ValueError(f"pitches must lie in [{lowest}, {lowest + num_pitches - 1}].")
    roll = np.eye(num_pitches, dtype="float32")[index]  # (N, T, 4, P)
    n, steps = len(windows), windows.shape[1] // bars
    return roll.transpose(0, 1, 3, 2).reshape(n, bars, steps, num_pitches, len(VOICES))


class RollBatches(keras.utils.PyDataset):
    """Batches of one-hot piano rolls, each window in a random transposition that keeps its voices in range.

    Args:
        windows: (N, T, 4) pitches from ``roll_windows``.
        bars: bars per window (T must be a multiple).
        batch_size, num_batches: examples per batch, batches per epoch.
        max_shift: largest transposition, semitones (0: none).
        seed: fixes which windows and shifts batch i of epoch e holds.
    """

    def __init__(self, windows, bars, batch_size, num_batches, max_shift=6, seed=0, ranges=VOICE_RANGES, **kwargs):
        super().__init__(**kwargs)
        self.windows = np.asarray(windows)
        self.bars, self.batch_size = _util.positive_int("bars", bars), _util.positive_int("batch_size", batch_size)
        self.batches_per_epoch, self.seed = _util.positive_int("num_batches", num_batches), seed
        lows, highs = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
        # The shifts that keep window i in range: [low[i], high[i]], clipped to +-max_shift.
        self.low = np.maximum(-max_shift, (lows - self.windows.min(axis=1)).max(axis=1))
        self.high = np.minimum(max_shift, (highs - self.windows.max(axis=1)).min(axis=1))
        self.epoch = 0

    def __len__(self):
        return self.batches_per_epoch

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pick = rng.integers(0, len(self.windows), self.batch_size)
        shift = rng.integers(self.low[pick], self.high[pick] + 1)
        return pitches_to_roll(self.windows[pick] + shift[:, None, None], self.bars)

    def on_epoch_end(self):
        self.epoch += 1


@keras.saving.register_keras_serializable(package="genlib")
class SplitLatents(layers.Layer):
    """Cut a noise vector into ``parts`` equal pieces. Shapes: (B, parts * d) -> ``parts`` tensors (B, d)."""

    def __init__(self, parts, **kwargs):
        super().__init__(**kwargs)
        self.parts = _util.positive_int("parts", parts)

    def call(self, z):
        return ops.split(z, self.parts, axis=-1)

    def compute_output_shape(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] % self.parts:
            raise ValueError(f"the noise length {input_shape[-1]} is not a multiple of parts={self.parts}.")
        d = None if input_shape[-1] is None else input_shape[-1] // self.parts
        return [(*input_shape[:-1], d)] * self.parts

    def get_config(self):
        return {**super().get_config(), "parts": self.parts}


@keras.saving.register_keras_serializable(package="genlib")
class StraightThroughOneHot(layers.Layer):
    """Forward: the one-hot of each distribution's most likely entry; backward: the gradient of the distribution.

    ``y = p + stop_gradient(onehot(argmax p) - p)`` equals the one-hot, but its gradient is the
    identity on ``p`` (the straight-through estimator, Bengio et al. 2013). The critic then sees
    rolls as hard as the real ones and must judge their music, not their softness.

    Args:
        axis: the axis holding each distribution. Shapes: any -> the same.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, probs):
        hard = ops.cast(probs >= ops.max(probs, axis=self.axis, keepdims=True), probs.dtype)
        return probs + ops.stop_gradient(hard - probs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def latent_layout(num_tracks: int = 4) -> list[str]:
    """Which piece of MuseGAN's noise vector is which: chords, style, melody_0.., groove_0.."""
    return ["chords", "style"] + [f"melody_{k}" for k in range(num_tracks)] + [f"groove_{k}" for k in range(num_tracks)]


def build_musegan_generator(z_dim: int = 32, bars: int = 2, steps_per_bar: int = 16, num_pitches: int = 48,
                            num_tracks: int = 4, filters: int = 32, hard: bool = True,
                            name: str = "generator") -> keras.Model:
    """MuseGAN's hybrid generator: shared and private latents, one bar generator per track.

    The noise z (B, (2 + 2K) * z_dim) is cut into (``latent_layout``): **chords** (shared by
    all tracks, a new vector per bar through a temporal network), **style** (shared, the same
    in every bar), and per track k its **melody** (private, per bar) and **groove** (private,
    fixed). Track k's bar generator sees ``[chords_b, style, melody_kb, groove_k]`` for each
    bar b: a dense layer to a coarse (steps/4, pitches/4) grid per bar, then two stride-2
    transposed convolutions over (time, pitch). A softmax over pitch gives each track one
    note per step; with ``hard`` the output is its one-hot (``StraightThroughOneHot``).

    Output: (B, bars, steps_per_bar, num_pitches, K), each (bar, step, track) a distribution
    over pitches. Changing only track k's private latents changes only track k.
    """
    z_dim, bars, steps_per_bar, num_pitches, num_tracks, filters = (
        _util.positive_int(k, v) for k, v in (("z_dim", z_dim), ("bars", bars), ("steps_per_bar", steps_per_bar),
                                              ("num_pitches", num_pitches), ("num_tracks", num_tracks),
                                              ("filters", filters)))
    if steps_per_bar % 4 or num_pitches % 4:
        raise ValueError(f"steps_per_bar and num_pitches must be multiples of 4 (two stride-2 layers), "
                         f"got {steps_per_bar} and {num_pitches}.")
    z = keras.Input((z_dim * (2 + 2 * num_tracks),), name="z")
    parts = SplitLatents(2 + 2 * num_tracks, name="split_latents")(z)
    chords, style = parts[0], parts[1]
    melody, groove = parts[2: 2 + num_tracks], parts[2 + num_tracks:]

    def temporal(x, label):  # one vector per bar: (B, z_dim) -> (B, bars, z_dim)
        h = layers.Dense(2 * z_dim, activation="relu", name=f"{label}_temporal_hidden")(x)
        return layers.Reshape((bars, z_dim))(layers.Dense(bars * z_dim, name=f"{label}_temporal")(h))

    chords_per_bar, style_per_bar = temporal(chords, "chords"), layers.RepeatVector(bars)(style)
    s0, p0 = steps_per_bar // 4, num_pitches // 4
    tracks = []
    for k in range(num_tracks):
        h = layers.Concatenate()([chords_per_bar, style_per_bar, temporal(melody[k], f"melody_{k}"),
                                  layers.RepeatVector(bars)(groove[k])])  # (B, bars, 4 z_dim)
        h = layers.Dense(s0 * p0 * 2 * filters, use_bias=False, name=f"track_{k}_dense")(h)
        h = layers.ReLU()(layers.BatchNormalization(name=f"track_{k}_bn0")(h))
        h = layers.Reshape((bars * s0, p0, 2 * filters))(h)  # the bars side by side in time
        h = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False, name=f"track_{k}_up1")(h)
        h = layers.ReLU()(layers.BatchNormalization(name=f"track_{k}_bn1")(h))
        tracks.append(layers.Conv2DTranspose(1, 4, strides=2, padding="same", name=f"track_{k}_up2")(h))
    logits = layers.Concatenate(name="tracks")(tracks)  # (B, bars * steps, pitches, K)
    probs = layers.Softmax(axis=2, name="pitch_softmax")(logits)
    if hard:
        probs = StraightThroughOneHot(axis=2, name="one_hot")(probs)
    out = layers.Reshape((bars, steps_per_bar, num_pitches, num_tracks), name="roll")(probs)
    return keras.Model(z, out, name=name)


def build_musegan_critic(bars: int = 2, steps_per_bar: int = 16, num_pitches: int = 48, num_tracks: int = 4,
                         filters: int = 32, name: str = "critic") -> keras.Model:
    """The critic: the tracks as channels of a (time, pitch) image, four stride-2 convolutions, one score.

    The first kernel spans an octave of pitch, so it can see chord shapes. LeakyReLU and no
    batch normalisation, so each example's score depends on that example only (the gradient
    penalty needs this). The convolutions have no bias: with one, TensorFlow's graph rewriter
    fuses convolution, bias and LeakyReLU into a node that the penalty's second derivative
    cannot follow, and logs "remapper failed". Shapes: (B, bars, steps_per_bar, num_pitches, K) -> (B, 1).
    """
    bars, steps_per_bar, num_pitches, num_tracks, filters = (
        _util.positive_int(k, v) for k, v in (("bars", bars), ("steps_per_bar", steps_per_bar),
                                              ("num_pitches", num_pitches), ("num_tracks", num_tracks),
                                              ("filters", filters)))
    x = keras.Input((bars, steps_per_bar, num_pitches, num_tracks), name="roll")
    h = layers.Reshape((bars * steps_per_bar, num_pitches, num_tracks))(x)
    for i, (f, kernel) in enumerate(((filters, (2, 12)), (2 * filters, (4, 5)), (4 * filters, (4, 3)),
                                     (4 * filters, (4, 3)))):
        h = layers.LeakyReLU(0.2)(layers.Conv2D(f, kernel, strides=2, padding="same", use_bias=False,
                                                name=f"conv_{i}")(h))
    return keras.Model(x, layers.Dense(1, name="score")(layers.Flatten()(h)), name=name)


@keras.saving.register_keras_serializable(package="genlib")
class MuseGAN(gan.WGANGP):
    """A multi-track WGAN-GP on piano rolls (Dong et al. 2018), trained as ``genlib.gan.WGANGP``.

    Args:
        generator: from ``build_musegan_generator``.
        discriminator: the critic, from ``build_musegan_critic``.
        n_critic, gp_weight, seed: as for ``WGANGP``.

    ``fit(RollBatches(...))``; ``generate(n)`` returns one-hot rolls; ``latents(n)`` and
    ``generate_from(latents)`` let you hold some latents fixed and vary others.
    """

    def __init__(self, generator, discriminator, **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.num_tracks = int(generator.outputs[0].shape[-1])
        self.z_dim = self.latent_dim // (2 + 2 * self.num_tracks)

    @staticmethod
    def one_hot(probs) -> np.ndarray:
        """Each (bar, step, track)'s most likely pitch, as a one-hot roll (float32 0/1)."""
        probs = np.asarray(probs)
        best = probs.argmax(axis=-2)[..., None, :]  # (..., 1, K)
        return (np.arange(probs.shape[-2])[:, None] == best).astype("float32")

    def latents(self, n: int, seed=None) -> dict:
        """Standard normal latents by name: ``chords``, ``style`` (n, z_dim); ``melody``, ``groove`` (n, K, z_dim)."""
        n = _util.positive_int("n", n)
        # drawn as GAN.generate draws them, so generate_from(latents(n, seed)) == generate(n, seed=seed)
        z = ops.convert_to_numpy(keras.random.normal((n, self.latent_dim),
                                                     seed=seed if seed is not None else self.seed_generator))
        parts = z.reshape(n, 2 + 2 * self.num_tracks, self.z_dim)
        K = self.num_tracks
        return {"chords": parts[:, 0], "style": parts[:, 1], "melody": parts[:, 2:2 + K], "groove": parts[:, 2 + K:]}

    def generate_from(self, latents: dict, batch_size: int = 256) -> np.ndarray:
        """One-hot rolls (n, bars, steps, pitches, K) from named latents (as ``latents`` returns them)."""
        parts = [latents["chords"][:, None], latents["style"][:, None], latents["melody"], latents["groove"]]
        z = np.concatenate(parts, axis=1).reshape(len(latents["chords"]), -1).astype("float32")
        out = [ops.convert_to_numpy(self.generator(z[i: i + batch_size], training=False))
               for i in range(0, len(z), batch_size)]
        return self.one_hot(np.concatenate(out))

    def generate(self, n: int, *, seed=None, batch_size: int = 256, progress=None) -> np.ndarray:
        """``n`` one-hot piano rolls (n, bars, steps, pitches, K), float32 in {0, 1}: the data's convention.

        Each (bar, step, track) holds its most likely pitch. ``seed``: the same seed gives the
        same rolls; ``progress``: a progress bar (None: quiet under ``smoke``).
        """
        return self.one_hot(super().generate(n, seed=seed, batch_size=batch_size, progress=progress))
