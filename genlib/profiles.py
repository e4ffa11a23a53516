"""Run profiles: how much compute a chapter spends.

``smoke`` is for CI on a 2-core CPU (each chapter in two minutes), ``cpu`` for a
reader's laptop (about ten minutes), ``full`` for one GPU (book-quality results).
The profile comes from the ``GENLIB_PROFILE`` environment variable; without it,
``full`` when a GPU is visible, else ``cpu``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("smoke", "cpu", "full")
ENV_VAR = "GENLIB_PROFILE"


def gpu_available() -> bool:
    """True when the active Keras backend sees at least one GPU."""
    from genlib import _util  # imported late: profiles is read before Keras picks its backend

    return _util.gpu_available()


def active() -> str:
    """The active profile name: ``$GENLIB_PROFILE``, else ``full`` on a GPU, else ``cpu``."""
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        return "full" if gpu_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a profile; expected one of {', '.join(PROFILES)}."
        )
    return name


def pick(*, smoke, cpu, full, profile: str | None = None):
    """Return the value for the active profile (or for ``profile`` if given).

    Example: ``epochs = pick(smoke=1, cpu=10, full=50)``.
    """
    name = active() if profile is None else profile
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}.")
    return {"smoke": smoke, "cpu": cpu, "full": full}[name]


def describe() -> str:
    """One line for a chapter's setup cell: profile, backend and device."""
    import keras

    device = "GPU" if gpu_available() else "CPU"
    return f"genlib profile: {active()} | Keras {keras.__version__} ({keras.backend.backend()}) on {device}"


def cache_dir() -> Path:
    """Where genlib caches trained models and parsed data: ``$GENLIB_CACHE`` or ``~/.cache/genlib``."""
    path = Path(os.environ.get("GENLIB_CACHE", Path.home() / ".cache" / "genlib"))
    path.mkdir(parents=True, exist_ok=True)
    return path
