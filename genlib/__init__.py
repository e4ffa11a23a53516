"""genlib: the small Keras 3 package behind *Generative Deep Learning, hands-on*.

Importing genlib picks TensorFlow as the Keras backend (unless the reader chose another)
and loads it quietly: TensorFlow's C++ start-up lines would otherwise land in every
notebook's output.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def quiet_stderr():
    """Silence writes to file descriptor 2 (C++ logging that no Python setting reaches)."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if os.environ["KERAS_BACKEND"] == "tensorflow" and "tensorflow" not in sys.modules:
    with quiet_stderr():
        import tensorflow

        # absl prints its CUDA probe before any log level applies, and the first device
        # query logs a cuInit error on GPU-less machines: do both while stderr is closed.
        tensorflow.config.list_physical_devices("GPU")

import keras  # noqa: E402,F401

from genlib import profiles  # noqa: E402

__version__ = "0.1.0"
__all__ = ["profiles", "quiet_stderr", "__version__"]
