"""Data for every chapter: Fashion-MNIST (images), Tiny Shakespeare (text), captioned Fashion-MNIST.

Used from chapter 1 (chapters/01_intro.ipynb) on; the captions serve chapter 12 (chapters/12_multimodal.ipynb).

Fashion-MNIST is found, in this order, in ``$GENLIB_DATA_DIR/fashion-mnist/``, in
``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``), in
the Keras download cache, and finally downloaded. Every file is checked by sha256
before it is used; a file that does not match is an error, never silently used.

Image conventions used across the book:
    * ``uint8`` in [0, 255] as stored; floats in [0, 1] or [-1, 1] (``scale``);
    * shapes ``(N, H, W, 1)`` with H = W = 28, or 32 (``pad_to_32``), or 16 (``downsample``);
    * ``k`` intensity levels as integers 0..k-1 (``quantize`` / ``dequantize``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from genlib import _util

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


class DataUnavailableError(RuntimeError):
    """No local copy of a data set and no way to download it."""


class ChecksumError(ValueError):
    """A data file exists but its sha256 is not the published one."""


# ---------------------------------------------------------------------------
# Finding and checking files


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | os.PathLike, expected: str) -> Path:
    """Return ``path`` if its sha256 is ``expected``; raise ``ChecksumError`` otherwise."""
    actual = sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} is corrupted or not the published file: sha256 {actual}, expected {expected}. "
            "Delete it and let genlib fetch it again, or replace it with a good copy."
        )
    return Path(path)


def data_dirs(subdir: str) -> list[Path]:
    """Local folders searched for a data set, in order."""
    dirs = []
    if os.environ.get("GENLIB_DATA_DIR"):
        dirs.append(Path(os.environ["GENLIB_DATA_DIR"]) / subdir)
    if subdir == "fashion-mnist":
        dirs.append(SYSTEM_DIR)
    dirs.append(Path.home() / ".keras" / "datasets" / subdir)
    return dirs


def _download(name: str, origin: str, expected: str, subdir: str) -> Path:
    import keras

    try:
        path = keras.utils.get_file(
            fname=name, origin=origin, file_hash=expected, hash_algorithm="sha256", cache_subdir=subdir
        )
    except Exception as err:  # no network, proxy refused, server gone...
        raise DataUnavailableError(_offline_message(subdir, err)) from None
    return verify(path, expected)


def _offline_message(subdir: str, err: Exception) -> str:
    if subdir == "fashion-mnist":
        how = (
            "Either set GENLIB_DATA_DIR to a folder holding fashion-mnist/*.gz, "
            "or run `apt-get install dataset-fashion-mnist` (puts them in /usr/share/datasets/fashion-mnist)."
        )
    else:
        how = f"Set GENLIB_DATA_DIR to a folder holding {subdir}/input.txt."
    return f"{subdir} is not available offline and could not be downloaded ({type(err).__name__}). {how}"


def find_file(name: str, expected: str, subdir: str, origin: str) -> Path:
    """Path of a checked copy of ``name``: a local one if any, else downloaded."""
    for folder in data_dirs(subdir):
        candidate = folder / name
        if candidate.is_file():
            return verify(candidate, expected)
    return _download(name, origin, expected, subdir)


# ---------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=1)
def load_fashion_mnist() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The raw data set: ``((x_train, y_train), (x_test, y_test))``, like ``keras.datasets``.

    Images are ``uint8`` of shape (N, 28, 28), labels ``uint8`` of shape (N,).
    """
    arrays = {}
    for name, expected in FASHION_MNIST_SHA256.items():
        path = find_file(name, expected, "fashion-mnist", FASHION_MNIST_URL + name)
        arrays[name] = _read_idx(path)
    return (
        (arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]),
        (arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]),
    )


class ImageData(NamedTuple):
    """Train and test images, shape (N, H, W, 1), with their integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def fashion_mnist(
    size: int = 28,
    value_range: tuple[float, float] = (0.0, 1.0),
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Fashion-MNIST ready for a chapter: resized, scaled, with a class-balanced subset.

    Args:
        size: 28 (as stored), 32 (zero-padded) or 16 (area-downsampled).
        value_range: ``(0, 1)`` or ``(-1, 1)`` for floats, or ``None`` to keep ``uint8``
            (only with size 28 or 32).
        n_train, n_test: how many images to keep (a seeded, class-balanced subset); all if None.
        seed: fixes the subset.
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = subset(x_train, y_train, n_train, seed=seed)
    x_test, y_test = subset(x_test, y_test, n_test, seed=seed + 1)
    prepared = []
    for x in (x_train, x_test):
        x = x[..., None]
        if value_range is None:
            if size == 16:
                raise ValueError("size 16 needs a float value_range; downsampling averages pixels.")
            x = pad_to_32(x) if size == 32 else x
        else:
            x = resize(scale(x, value_range), size)
        prepared.append(x)
    return ImageData(prepared[0], y_train.astype("int32"), prepared[1], y_test.astype("int32"))


def subset(x: np.ndarray, y: np.ndarray | None = None, n: int | None = None, seed: int = 0):
    """A seeded random subset of ``n`` rows; class-balanced (as far as possible) when ``y`` is given.

    Returns ``x_sub`` or ``(x_sub, y_sub)`` matching the call. ``n=None`` keeps everything.
    """
    n = _util.optional_positive_int("n", n)
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}.")
    if n is None or n >= len(x):
        return x if y is None else (x, y)
    rng = np.random.default_rng(seed)
    if y is None:
        idx = np.sort(rng.choice(len(x), size=n, replace=False))
        return x[idx]
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    # Round-robin over classes so every class gets n // C (or one more).
    order = [p[i] for i in range(max(map(len, per_class))) for p in per_class if i < len(p)]
    idx = np.sort(np.array(order[:n]))
    return x[idx], y[idx]


# ---------------------------------------------------------------------------
# Transforms


def scale(x: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """``uint8`` images in [0, 255] to ``float32`` in ``value_range`` ((0, 1) or (-1, 1))."""
    if tuple(value_range) not in ((0, 1), (-1, 1)):
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range!r}.")
    if np.issubdtype(np.asarray(x).dtype, np.floating):
        raise ValueError("scale expects uint8 images in [0, 255]; these are already floats.")
    low, high = value_range
    return (np.asarray(x, dtype="float32") / 255.0) * (high - low) + low


def unscale(x: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Inverse of ``scale``: floats in ``value_range`` back to ``uint8`` (clipped, rounded)."""
    low, high = value_range
    unit = (np.asarray(x, dtype="float32") - low) / (high - low)
    return np.clip(np.round(unit * 255.0), 0, 255).astype("uint8")


def pad_to_32(x: np.ndarray) -> np.ndarray:
    """Zero-pad (N, 28, 28, C) images to (N, 32, 32, C), two pixels on each side.

    Pads with the background value: 0 for [0, 1] and uint8 data, -1 for [-1, 1] data.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:3] != (28, 28):
        raise ValueError(f"pad_to_32 expects (N, 28, 28, C) images, got shape {x.shape}.")
    background = -1 if np.issubdtype(x.dtype, np.floating) and x.min() < 0 else 0
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=background)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of area averaging along one axis: row i averages the input cells
    under ``[i, i + 1) * n_in / n_out``, each weighted by the length of its overlap."""
    width = n_in / n_out
    start = np.arange(n_out)[:, None] * width
    cell = np.arange(n_in)[None, :]
    overlap = np.minimum(cell + 1, start + width) - np.maximum(cell, start)
    return np.clip(overlap, 0.0, None) / width


def downsample(x: np.ndarray, size: int = 16) -> np.ndarray:
    """Area-average float (N, H, W, C) images to (N, size, size, C).

    Every output pixel is the mean of the input area it covers (what TensorFlow calls
    ``area`` resizing), written in NumPy so that it is the same on every Keras backend.
    """
    x = np.asarray(x)
    size = _util.positive_int("size", size)
    if x.ndim != 4:
        raise ValueError(f"downsample expects (N, H, W, C) images, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError("downsample expects float images; call scale() first.")
    rows, cols = area_weights(x.shape[1], size), area_weights(x.shape[2], size)
    return np.einsum("ih,nhwc,jw->nijc", rows, x.astype("float32"), cols).astype("float32")


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bring float (N, 28, 28, C) images to the book's sizes: 28, 32 (padded) or 16 (downsampled)."""
    if size == 28:
        return x
    if size == 32:
        return pad_to_32(x)
    if size == 16:
        return downsample(x, 16)
    raise ValueError(f"size must be 16, 28 or 32, got {size!r}.")


def quantize(x: np.ndarray, levels: int, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Map images to integers 0..levels-1 (equal-width bins over ``value_range``).

    Accepts ``uint8`` in [0, 255] or floats in ``value_range``. Returns ``int32``.
    """
    if _util.positive_int("levels", levels, 2) > 256:
        raise ValueError(f"levels must be an integer in [2, 256], got {levels!r}.")
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        low, high = value_range
        unit = (x - low) / (high - low)
    else:
        unit = x.astype("float32") / 255.0
    # Equal-width bins; a value exactly at the top belongs to the last bin.
    return np.clip(np.floor(unit * levels), 0, levels - 1).astype("int32")


def dequantize(q: np.ndarray, levels: int, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Integers 0..levels-1 to floats in ``value_range`` at the centre of each bin.

    ``quantize(dequantize(q, k), k) == q`` for every valid ``q``.
    """
    q = np.asarray(q)
    if q.size and (q.min() < 0 or q.max() >= levels):
        raise ValueError(f"levels must lie in [0, {levels - 1}], got values in [{q.min()}, {q.max()}].")
    low, high = value_range
    return ((q.astype("float32") + 0.5) / levels * (high - low) + low).astype("float32")


class Dequantized(keras.utils.PyDataset):
    """Batches of dequantised images with fresh noise every time: ``(q + u) / levels``, ``u ~ U[0, 1)``.

    A density model of integer images is trained on continuous ones; drawing the noise ``u`` once
    and reusing it every epoch lets a flexible model learn that particular draw (density spikes on
    it). Passed to ``fit`` as ``x``, this draws new noise for every batch, reproducibly under
    ``seed``, and reshuffles every epoch.
    """

    def __init__(self, q, batch_size, levels=256, seed=0, shuffle=True):
        super().__init__()
        q = np.asarray(q)
        if not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"q must hold integer levels (use quantize first), got dtype {q.dtype}.")
        self.levels = _util.positive_int("levels", levels, minimum=2)
        if q.size and (q.min() < 0 or q.max() >= self.levels):
            raise ValueError(f"q must lie in [0, {self.levels - 1}], got values in [{q.min()}, {q.max()}].")
        self.batch_size = _util.positive_int("batch_size", batch_size)
        self.seed = _util.positive_int("seed", seed, minimum=0)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {shuffle!r}.")
        self.q, self.shuffle, self.epoch = q, shuffle, 0
        self._reorder()

    def _reorder(self):
        rng = np.random.default_rng([self.seed, self.epoch, 0])
        self.order = rng.permutation(len(self.q)) if self.shuffle else np.arange(len(self.q))

    def __len__(self):
        return -(-len(self.q) // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size: (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index + 1])  # one stream per (epoch, batch)
        return ((self.q[rows] + rng.uniform(size=(len(rows), *self.q.shape[1:]))) / self.levels).astype("float32")

    def on_epoch_end(self):
        self.epoch += 1
        self._reorder()

# ---------------------------------------------------------------------------
# Tiny Shakespeare


@functools.lru_cache(maxsize=1)
def load_tiny_shakespeare() -> str:
    """The Tiny Shakespeare text (1,115,394 characters), checked by sha256."""
    path = find_file("input.txt", SHAKESPEARE_SHA256, "tinyshakespeare", SHAKESPEARE_URL)
    return path.read_text(encoding="utf-8")


class CharVocab:
    """A character vocabulary: ``encode`` text to int ids, ``decode`` ids to text.

    Args:
        chars: the characters, in id order (use ``CharVocab.from_text``).
    """

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("chars must be a non-empty string of distinct characters.")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return np.array([self.index[c] for c in text], dtype="int32")

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).ravel())


def tiny_shakespeare(val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, CharVocab]:
    """Tiny Shakespeare as ids: ``(train_ids, val_ids, vocab)``; the last ``val_fraction`` is validation."""
    _util.number("val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    text = load_tiny_shakespeare()
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:], vocab


# ---------------------------------------------------------------------------
# Captioned Fashion-MNIST (the multimodal chapter)

CAPTION_CLASS_WORDS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle boot")
# Attribute values, in index order, each with several phrasings (the first is the plain one).
TONE_WORDS = (("dark", "black", "deep"), ("light", "pale", "bright"))
SIZE_WORDS = (("small", "slim", "narrow"), ("large", "wide", "big"))
CAPTION_TEMPLATES = ("a photo of a {tone} {size} {cls}", "a {size} {tone} {cls}", "a {cls} that is {tone} and {size}",
                     "this {cls} is {size} and {tone}")
# Per-class medians of the two pixel statistics over the 60,000 training images, so that each
# attribute splits every class in half: "dark" means darker than a typical item *of its class*.
TONE_THRESHOLDS = (0.639, 0.695, 0.656, 0.688, 0.724, 0.517, 0.581, 0.585, 0.687, 0.702)
SIZE_THRESHOLDS = (0.543, 0.318, 0.611, 0.390, 0.575, 0.245, 0.591, 0.283, 0.537, 0.430)
FOREGROUND = 0.1  # a pixel above 10% of full intensity belongs to the garment
# (class, tone, size) combinations never captioned in training: one per class.
HELDOUT_COMBINATIONS = tuple((c, c % 2, (c // 2) % 2) for c in range(10))


def pixel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tone, size)`` of (N, 28, 28[, 1]) ``uint8`` images, each shaped (N,).

    tone: mean intensity (in [0, 1]) of the foreground pixels; size: the fraction of the
    image they cover. Foreground means above ``FOREGROUND`` of full intensity.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise ValueError(f"pixel_statistics expects uint8 images (N, 28, 28[, 1]), got {x.dtype} {x.shape}.")
    x = x.astype("float32") / 255.0
    fg = x > FOREGROUND
    tone = (x * fg).sum((1, 2)) / np.maximum(fg.sum((1, 2)), 1)
    return tone, fg.mean((1, 2))


def caption_attributes(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Attributes measured from pixels: (N, 2) ``int32``.

    Column 0 is the tone (0 dark, 1 light), column 1 the size (0 small, 1 large).

    Thresholds are per-class medians (``TONE_THRESHOLDS``, ``SIZE_THRESHOLDS``).
    """
    labels = np.asarray(labels).astype("int64").ravel()
    if len(labels) != len(images) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"need one label in 0..9 per image, got {len(labels)} labels for {len(images)} images.")
    tone, size = pixel_statistics(images)
    return np.stack([tone > np.asarray(TONE_THRESHOLDS)[labels], size > np.asarray(SIZE_THRESHOLDS)[labels]],
                    axis=1).astype("int32")


def make_captions(labels: np.ndarray, attributes: np.ndarray, seed: int = 0) -> list[str]:
    """One caption per item: a random template filled with a random phrasing of each attribute.

    Deterministic for a seed. ``labels`` (N,) in 0..9, ``attributes`` (N, 2) from ``caption_attributes``.
    """
    labels, attributes = np.asarray(labels).ravel(), np.asarray(attributes)
    if attributes.shape != (len(labels), 2):
        raise ValueError(f"attributes must be shaped (N, 2) = ({len(labels)}, 2), got {attributes.shape}.")
    rng = np.random.default_rng(seed)
    template, tone_pick, size_pick = (rng.integers(0, k, len(labels)) for k in (len(CAPTION_TEMPLATES), 3, 3))
    return [CAPTION_TEMPLATES[t].format(cls=CAPTION_CLASS_WORDS[c], tone=TONE_WORDS[a[0]][i], size=SIZE_WORDS[a[1]][j])
            for c, a, t, i, j in zip(labels, attributes, template, tone_pick, size_pick)]


def parse_caption(caption: str) -> tuple[int, int, int]:
    """``(class, tone, size)`` named by a caption of ``make_captions`` (-1 where the caption is silent)."""
    text = f" {caption} "
    cls = next((c for c, w in enumerate(CAPTION_CLASS_WORDS) if f" {w} " in text), -1)
    words = set(caption.split())
    tone = next((v for v, ws in enumerate(TONE_WORDS) if words & set(ws)), -1)
    size = next((v for v, ws in enumerate(SIZE_WORDS) if words & set(ws)), -1)
    return cls, tone, size


class WordVocab:
    """Word tokens for captions: id 0 pads, id 1 ends a caption (EOS), then the words.

    Args:
        words: the vocabulary (distinct, no spaces). ``WordVocab.captions()`` holds every
            word the caption generator and the class prompts use.
    """

    PAD, EOS = 0, 1

    def __init__(self, words):
        words = list(words)
        if len(set(words)) != len(words) or any(" " in w or not w for w in words):
            raise ValueError("words must be distinct non-empty strings without spaces.")
        self.words = words
        self.index = {w: i + 2 for i, w in enumerate(words)}

    @classmethod
    def captions(cls) -> WordVocab:
        attribute_words = tuple(w for ws in TONE_WORDS + SIZE_WORDS for w in ws)
        text = " ".join(CAPTION_TEMPLATES + CAPTION_CLASS_WORDS + attribute_words)
        text = text.replace("{cls}", " ").replace("{tone}", " ").replace("{size}", " ")
        return cls(sorted(set(text.split())))

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, captions, max_length: int = 12) -> np.ndarray:
        """(N, max_length) ``int32``: word ids, then EOS, then padding. Unknown words are an error."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        out = np.zeros((len(captions), max_length), dtype="int32")
        for n, caption in enumerate(captions):
            words = caption.lower().split()
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(f"words not in the vocabulary: {unknown} (in {caption!r}).")
            if len(words) + 1 > max_length:
                raise ValueError(f"caption {caption!r} needs {len(words) + 1} tokens with EOS; "
                                 f"max_length={max_length}.")
            out[n, : len(words) + 1] = [self.index[w] for w in words] + [self.EOS]
        return out

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).ravel()]
        return " ".join(self.words[i - 2] for i in ids if i >= 2)


class CaptionedData(NamedTuple):
    """Captioned Fashion-MNIST: images (N, S, S, 1), labels (N,), attributes (N, 2), captions (list of N str).

    ``heldout_test`` (N_test,) marks test items whose (class, tone, size) combination never
    occurs in training (``HELDOUT_COMBINATIONS``); ``vocab`` tokenises captions.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    attributes_train: np.ndarray
    captions_train: list
    x_test: np.ndarray
    y_test: np.ndarray
    attributes_test: np.ndarray
    captions_test: list
    heldout_test: np.ndarray
    vocab: WordVocab


def _combination_mask(labels, attributes, combinations) -> np.ndarray:
    key = labels * 4 + attributes[:, 0] * 2 + attributes[:, 1]
    held = [c * 4 + t * 2 + s for c, t, s in combinations]
    return np.isin(key, held)


def captioned_fashion_mnist(size: int = 28, value_range: tuple[float, float] = (0.0, 1.0), n_train: int | None = None,
                            n_test: int | None = None, seed: int = 0,
                            heldout=HELDOUT_COMBINATIONS) -> CaptionedData:
    """Fashion-MNIST with a caption per image, generated from its label and its measured attributes.

    Attributes come from the 28×28 pixels before resizing (``caption_attributes``). Training
    items with a held-out combination are dropped, so ``len(x_train)`` is about 3/4 of
    ``n_train`` with the default one-in-four combinations held out per class.

    Args:
        size, value_range, n_train, n_test, seed: as in ``fashion_mnist`` (seed also picks the phrasings).
        heldout: (class, tone, size) triples kept out of training.
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    parts = []
    for x, y, n, s in ((x_train, y_train, n_train, seed), (x_test, y_test, n_test, seed + 1)):
        x, y = subset(x, y, n, seed=s)
        y = y.astype("int32")
        parts.append((x, y, caption_attributes(x, y)))
    (xtr, ytr, atr), (xte, yte, ate) = parts
    keep = ~_combination_mask(ytr, atr, heldout)
    xtr, ytr, atr = xtr[keep], ytr[keep], atr[keep]
    prepare = (lambda x: resize(scale(x[..., None], value_range), size))
    return CaptionedData(prepare(xtr), ytr, atr, make_captions(ytr, atr, seed), prepare(xte), yte, ate,
                         make_captions(yte, ate, seed + 1), _combination_mask(yte, ate, heldout), WordVocab.captions())
