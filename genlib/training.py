"""Training helpers shared by every chapter: seeding, timing, a sample-grid callback, fit_or_load."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import keras

from genlib import profiles

# For loops a chapter writes by hand: backend-neutral gradients and a progress bar. They live in _util,
# the one module that may name a backend; chapters reach them here.
from genlib._util import Progress, input_gradient, number, value_and_grad  # noqa: F401
from genlib._util import fit_verbose as verbose  # noqa: F401  (what chapters pass to fit)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and the Keras backend in one call."""
    keras.utils.set_random_seed(seed)


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


class SampleGrid(keras.callbacks.Callback):
    """Keep a grid of samples every ``every`` epochs; ``show`` draws them as one figure.

    Args:
        sample_fn: a function ``model -> images`` (e.g. ``lambda m: m.generate(16)``);
            should be seeded so rows are comparable across epochs.
        every: epochs between grids.
        num_images: how many images of each grid to keep.
    """

    def __init__(self, sample_fn, every: int = 1, num_images: int = 8):
        super().__init__()
        if every < 1 or num_images < 1:
            raise ValueError("every and num_images must be at least 1.")
        self.sample_fn = sample_fn
        self.every = every
        self.num_images = num_images
        self.grids: list[tuple[int, object]] = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            images = keras.ops.convert_to_numpy(self.sample_fn(self.model))
            self.grids.append((epoch + 1, images[: self.num_images]))

    def show(self, value_range=None):
        """One row per kept epoch: how samples improve during training."""
        import numpy as np

        from genlib import plot

        if not self.grids:
            raise ValueError("no grids yet: train first.")
        images = np.concatenate([g for _, g in self.grids])
        return plot.image_grid(images, ncols=self.num_images, value_range=value_range,
                               row_labels=[f"epoch {e}" for e, _ in self.grids])


class WallClockBudget(keras.callbacks.Callback):
    """Stops ``fit`` once ``seconds`` of wall-clock time have passed since training began.

    Two models trained with the same budget are compared at equal cost, whatever each step
    costs. ``steps`` counts the batches done; ``seconds_used`` the time actually spent.
    """

    def __init__(self, seconds):
        super().__init__()
        self.seconds = number("seconds", seconds, 0.0, low_open=True)
        self.steps, self.seconds_used = 0, 0.0

    def on_train_begin(self, logs=None):
        self.start, self.steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.seconds_used = time.perf_counter() - self.start
        if self.seconds_used >= self.seconds:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.seconds_used = time.perf_counter() - self.start


def checkpoint_dir() -> Path:
    path = profiles.cache_dir() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _HistoryLog(keras.callbacks.Callback):
    # Writes each finished epoch's logs (and its wall time, in a second file) to disk, so a run
    # resumed by BackupAndRestore still returns the curves, and the training time, of the epochs
    # it did not run again.
    def __init__(self, path: Path, seconds_path: Path):
        super().__init__()
        self.path, self.seconds_path = path, seconds_path
        self.epochs = json.loads(path.read_text()) if path.exists() else {}
        self.seconds = json.loads(seconds_path.read_text()) if seconds_path.exists() else {}
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[str(epoch)] = {k: float(v) for k, v in (logs or {}).items()}
        self.seconds[str(epoch)] = time.perf_counter() - self._start
        self.path.write_text(json.dumps(self.epochs))
        self.seconds_path.write_text(json.dumps(self.seconds))

    def history(self) -> dict:
        rows = [self.epochs[k] for k in sorted(self.epochs, key=int)]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        return {k: [row[k] for row in rows if k in row] for k in keys}


def _describe(value):
    # What of a fit argument decides the trained weights, in JSON: arrays by shape and dtype (not their
    # contents: hashing a data set would cost more than loading a checkpoint saves), datasets by length.
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ["array", [int(d) for d in value.shape], str(value.dtype)]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items())}
    if isinstance(value, (tuple, list)):
        return [_describe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return [type(value).__name__, len(value)]
    except TypeError:
        return type(value).__name__


def training_fingerprint(model: keras.Model, fit_args=(), fit_kwargs=None) -> str:
    """Eight hex digits that change when the training run would: the model's parameter count, its
    optimizer's settings, the shapes of the data and the fit arguments that set how long it trains.

    ``fit_or_load`` puts it in the checkpoint's name, so a cached model trained on fewer images or
    for fewer epochs is not loaded in place of the one the reader asked for.
    """
    fit_kwargs = fit_kwargs or {}
    try:
        optimizer = {k: v for k, v in model.optimizer.get_config().items() if k != "name"}
    except (AttributeError, NotImplementedError):
        optimizer = None
    spec = {"params": int(model.count_params()), "optimizer": optimizer, "args": _describe(list(fit_args)),
            **{k: _describe(fit_kwargs.get(k)) for k in ("x", "y", "epochs", "batch_size", "steps_per_epoch",
                                                         "validation_split", "initial_epoch")}}
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def fit_or_load(model: keras.Model, name: str, *fit_args, **fit_kwargs) -> dict:
    """Train ``model`` with ``fit`` unless a finished checkpoint for this run exists.

    The checkpoint lives in ``$GENLIB_CACHE/checkpoints/{name}-{profile}-{fingerprint}.weights.h5``
    (``training_fingerprint``: the parameter count, optimizer, data shapes, epochs, batch size),
    with the training history and training time beside it, so a reloaded model still has its
    curves. While training, a ``BackupAndRestore`` folder keeps the last finished epoch and a log
    keeps every finished epoch's metrics: an interrupted run resumes there instead of
    starting over, and its history still starts at epoch 1.

    The model must be built (call it on a batch, or give it an ``Input``) and compiled.
    Returns the history dict (loaded from disk when the model was loaded).
    """
    return _fit_or_load(model, name, fit_args, fit_kwargs)[0]


def fit_or_load_timed(model: keras.Model, name: str, *fit_args, label: str | None = None,
                      **fit_kwargs) -> tuple[dict, float | None]:
    """``fit_or_load`` that also returns the training time in seconds, and says it in one line.

    Weights loaded from the cache report the time the run that trained them recorded (the sum of
    its epochs' wall times), not the second it took to load them; ``None`` for a checkpoint saved
    before training times were recorded. ``label`` names the model in the printed line.
    """
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string, got {type(label).__name__}.")
    history, seconds, loaded = _fit_or_load(model, name, fit_args, fit_kwargs)
    label = label or name
    if not loaded:
        print(f"{label}: trained in {seconds:.0f} s")
    elif seconds is None:
        print(f"{label}: loaded from the cache (training time not recorded)")
    else:
        print(f"{label}: loaded from the cache (trained in {seconds:.0f} s by an earlier run)")
    return history, seconds


def _fit_or_load(model, name, fit_args, fit_kwargs):
    # -> (history, training seconds or None, loaded from the cache?)
    if not model.built:
        raise ValueError("build the model before fit_or_load (call it once on a batch).")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"name must be a non-empty file name without slashes, got {name!r}.")
    # Suffixes are appended as text: Path.with_suffix would cut a name at its last dot ("lr0.3").
    stem = f"{name}-{profiles.active()}-{training_fingerprint(model, fit_args, fit_kwargs)}"
    folder = checkpoint_dir()
    weights, history_path = folder / f"{stem}.weights.h5", folder / f"{stem}.history.json"
    seconds_path = folder / f"{stem}.seconds.json"
    backup, partial = folder / f"{stem}.backup", folder / f"{stem}.history.partial.json"
    partial_seconds = folder / f"{stem}.seconds.partial.json"
    if weights.exists() and history_path.exists():
        with warnings.catch_warnings():
            # A checkpoint holds the optimizer's slots; a model loaded to sample never builds them.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(weights)
        seconds = json.loads(seconds_path.read_text()) if seconds_path.exists() else None
        return json.loads(history_path.read_text()), seconds, True
    if not backup.exists():
        # a log without a backup to resume from belongs to a run that starts over
        partial.unlink(missing_ok=True)
        partial_seconds.unlink(missing_ok=True)
    log = _HistoryLog(partial, partial_seconds)
    if model.optimizer is not None and not model.optimizer.built:
        # TensorFlow otherwise creates the optimizer's slots inside the first traced step, and a
        # compiled function that creates variables is traced twice: building them here halves the
        # first epoch (20 s -> 10 s for a small U-Net on 2 cores). JAX's fit builds them the same way.
        model.optimizer.build(model.trainable_variables)
    callbacks = list(fit_kwargs.pop("callbacks", []))
    callbacks += [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=True), log]
    model.fit(*fit_args, callbacks=callbacks, **fit_kwargs)
    hist = log.history()
    seconds = float(sum(log.seconds.values()))
    model.save_weights(weights)
    history_path.write_text(json.dumps(hist))
    seconds_path.write_text(json.dumps(seconds))
    partial.unlink(missing_ok=True)
    partial_seconds.unlink(missing_ok=True)
    return hist, seconds, False
