"""Data for every chapter: Fashion-MNIST (images) and Tiny Shakespeare (text).

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

import numpy as np

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
    if n is not None and (not isinstance(n, (int, np.integer)) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}.")
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


def downsample(x: np.ndarray, size: int = 16) -> np.ndarray:
    """Area-average float (N, H, W, C) images to (N, size, size, C)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"downsample expects (N, H, W, C) images, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError("downsample expects float images; call scale() first.")
    import keras

    out = keras.ops.image.resize(x, (size, size), interpolation="area")
    return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


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
    if not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 256:
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
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}.")
    text = load_tiny_shakespeare()
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:], vocab
