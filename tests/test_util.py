"""The shared plumbing: validators, gradients and compiled steps on the active backend, progress output."""

import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util, distributions


@pytest.mark.parametrize("value", [True, False, 0, -1, 1.5, "3", None])
def test_positive_int_refuses_bools_and_non_ints(value):
    with pytest.raises(ValueError, match="must be an int"):
        _util.positive_int("n", value)


def test_validators_return_clean_values():
    assert _util.positive_int("n", np.int64(3)) == 3 and type(_util.positive_int("n", np.int64(3))) is int
    assert _util.positive_int("n", 0, minimum=0) == 0
    assert _util.fraction("p", 0.25) == 0.25
    assert _util.choice("kind", "a", ("a", "b")) == "a"
    assert _util.shape("image_shape", [28, 28, 1], rank=3) == (28, 28, 1)
    for bad in (True, float("nan"), 1.0):
        with pytest.raises(ValueError):
            _util.fraction("p", bad)
    with pytest.raises(ValueError, match="one of 'a', 'b'"):
        _util.choice("kind", "c", ("a", "b"))
    with pytest.raises(ValueError, match="3 entries"):
        _util.shape("image_shape", (28, 28), rank=3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _util.number("sigma", 0.0, 0.0, 1.0, low_open=True)


def test_value_and_grad_matches_closed_form_and_keeps_assignments():
    w = keras.Variable(np.array([1.0, -2.0], "float32"))
    counter = keras.Variable(0.0, trainable=False)

    def loss():
        counter.assign(counter + 1.0)  # a side effect (like a seed generator) must survive
        return ops.sum(w**3), ops.sum(w)

    value, aux, (grad,) = _util.value_and_grad(loss, [w])
    np.testing.assert_allclose(float(value), -7.0)
    np.testing.assert_allclose(float(aux), -1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(grad), [3.0, 12.0])
    assert float(ops.convert_to_numpy(counter.value)) == 1.0


def test_input_gradient_is_differentiable_again():
    # d/dw of ||d/dx (w x^2)||^2 at x: the inner gradient is 2wx, the outer 8 w sum(x^2).
    w = keras.Variable(np.array(1.5, "float32"))
    x = ops.convert_to_tensor(np.array([1.0, 2.0], "float32"))

    def penalty():
        g = _util.input_gradient(lambda v: w * v**2, x)
        return ops.sum(g**2)

    value, _, (grad,) = _util.value_and_grad(penalty, [w])
    np.testing.assert_allclose(float(value), 4 * 1.5**2 * 5.0, rtol=1e-5)
    np.testing.assert_allclose(float(grad), 8 * 1.5 * 5.0, rtol=1e-5)


def test_compile_step_sees_new_weights_and_advances_state():
    w = keras.Variable(np.array(2.0, "float32"))
    seed = keras.random.SeedGenerator(0)
    step = _util.compile_step(lambda x: (w * x, keras.random.normal((3,), seed=seed)), state=[w, seed.state])
    y1, n1 = step(ops.convert_to_tensor(1.0))
    w.assign(5.0)
    y2, n2 = step(ops.convert_to_tensor(1.0))
    assert float(y1) == 2.0 and float(y2) == 5.0  # not frozen at the first trace
    assert not np.allclose(ops.convert_to_numpy(n1), ops.convert_to_numpy(n2))  # the seed moved


class TwoOptimizers(_util.TrainStepModel):
    """Least squares for `a`, then for `b` given `a`, each with its own optimizer: a GAN's structure."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(1, use_bias=False)
        self.b = keras.layers.Dense(1, use_bias=False)
        self.noise = keras.random.SeedGenerator(0)
        self.a_loss = keras.metrics.Mean(name="a_loss")

    def call(self, x):
        return self.b(self.a(x))

    @property
    def metrics(self):
        return [self.a_loss]

    def compile(self):
        self.a_opt, self.b_opt = keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)
        self.a_opt.build(self.a.trainable_variables)
        self.b_opt.build(self.b.trainable_variables)
        super().compile(optimizer=_util.OptimizerGroup([self.a_opt, self.b_opt]))

    def training_step(self, data):
        x, y = data
        x = x + 0.0 * keras.random.normal(ops.shape(x), seed=self.noise)
        loss, _, grads = _util.value_and_grad(lambda: ops.mean((self.a(x) - y) ** 2), self.a.trainable_variables)
        self.a_opt.apply(grads, self.a.trainable_variables)
        _, _, grads = _util.value_and_grad(lambda: ops.mean((self.b(self.a(x)) - 2 * y) ** 2),
                                           self.b.trainable_variables)
        self.b_opt.apply(grads, self.b.trainable_variables)
        self.a_loss.update_state(loss)
        return {"a_loss": self.a_loss.result()}


def test_train_step_model_updates_both_optimizers_under_fit():
    x = np.random.default_rng(0).normal(size=(256, 1)).astype("float32")
    model = TwoOptimizers()
    model(x[:2])
    model.compile()
    history = model.fit(x, 3 * x, batch_size=32, epochs=8, verbose=0)
    assert history.history["a_loss"][-1] < 0.01 * history.history["a_loss"][0]
    a = float(ops.convert_to_numpy(model.a.kernel)[0, 0])
    b = float(ops.convert_to_numpy(model.b.kernel)[0, 0])
    np.testing.assert_allclose([a, a * b], [3.0, 6.0], rtol=0.02)
    assert int(ops.convert_to_numpy(model.a_opt.iterations)) == int(ops.convert_to_numpy(model.b_opt.iterations)) == 64


def test_distributions_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    expected = ((a[:, None] - b[None]) ** 2).sum(-1)
    np.testing.assert_allclose(ops.convert_to_numpy(distributions.squared_distances(a, b)), expected, atol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(distributions.nearest(a, b)), expected.argmin(1))
    x, mean, log_sigma = 0.3, 0.1, np.log(0.5)
    density = np.exp(-((x - mean) ** 2) / (2 * 0.25)) / np.sqrt(2 * np.pi * 0.25)
    np.testing.assert_allclose(float(distributions.normal_log_density(x, mean, log_sigma)), np.log(density), rtol=1e-6)
    np.testing.assert_allclose(distributions.bits_per_dim(np.log(256.0) * 4, 4), 8.0)
    logits = ops.convert_to_tensor(np.log(np.array([[0.7, 0.2, 0.1]] * 4000, "float32")))
    draws = ops.convert_to_numpy(distributions.gumbel_max(logits, seed=0))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1], atol=0.03)


def test_progress_leaves_one_line_in_a_built_page(capsys, monkeypatch):
    monkeypatch.setenv("GENLIB_STATIC_OUTPUT", "1")
    with _util.Progress(500, enabled=True, unit="step", label="sampling") as bar:
        for i in range(500):
            bar.update(i + 1, {"loss": 1.0 / (i + 1)})
    lines = [line for line in capsys.readouterr().out.replace("\r", "\n").splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("sampling: 500/500 steps")


def test_fit_is_silent_in_a_built_page_and_live_interactively(monkeypatch):
    monkeypatch.setenv("GENLIB_PROFILE", "cpu")
    monkeypatch.setenv("GENLIB_STATIC_OUTPUT", "1")
    assert _util.fit_verbose() == 0  # no per-epoch lines between a page's figures
    monkeypatch.delenv("GENLIB_STATIC_OUTPUT")
    assert _util.fit_verbose() == 1  # a live bar in Jupyter, Colab, a terminal
    monkeypatch.setenv("GENLIB_PROFILE", "smoke")
    assert _util.fit_verbose() == 0


def test_progress_is_quiet_under_smoke_unless_asked(capsys, monkeypatch):
    monkeypatch.setenv("GENLIB_PROFILE", "smoke")
    monkeypatch.delenv("GENLIB_STATIC_OUTPUT", raising=False)
    with _util.Progress(10) as bar:
        bar.update(10)
    assert capsys.readouterr().out == ""


def test_no_family_module_names_a_backend():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "genlib").glob("*.py")) + sorted((root / "tests").glob("*.py")):
        if path.name in ("_util.py", "__init__.py", "test_util.py"):
            continue  # the shim (with the GPU probe) and the quiet TF import are the backend-aware places
        text = path.read_text()
        for pattern in (r"import tensorflow", r"\btf\.", r"import jax", r"import torch"):
            assert not re.search(pattern, text), f"{path.name} names a backend ({pattern!r})"


def test_genlib_imports_without_tensorflow_under_jax():
    # Importing genlib with KERAS_BACKEND=jax must not import TensorFlow.
    code = textwrap.dedent("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        import importlib.util
        if importlib.util.find_spec("jax") is None:
            print("skip"); raise SystemExit
        import genlib, genlib.metrics, genlib.training, genlib.plot
        print("tensorflow" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.strip() == "skip":
        pytest.skip("JAX is not installed in this environment")
    assert out.stdout.strip().splitlines()[-1] == "False"
