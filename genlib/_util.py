"""Small helpers shared by several genlib modules: argument checks and step compilation."""

from __future__ import annotations

import keras
import numpy as np


def positive_int(name, value, minimum=1):
    """``value`` as an int, or a ValueError naming ``name`` if it is not an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def compile_step(fn):
    """Compile a step function for the backend: a Python loop of many calls must not pay eager overhead."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn
