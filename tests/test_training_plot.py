import time

import keras
import matplotlib
import numpy as np
import pytest

from genlib import _util, plot, training

matplotlib.use("Agg")


def small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_fit_or_load_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    training.seed_everything(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    first = small_model()
    hist = training.fit_or_load(first, "toy", x, y, epochs=3, verbose=0)
    assert len(hist["loss"]) == 3 and hist["loss"][-1] < hist["loss"][0]
    second = small_model()
    again = training.fit_or_load(second, "toy", x, y, epochs=3, verbose=0)
    assert again == hist
    np.testing.assert_allclose(second.predict(x, verbose=0), first.predict(x, verbose=0))


class _StopAfter(keras.callbacks.Callback):
    # Simulates an interrupted run: an exception after `epochs` finished epochs.
    def __init__(self, epochs):
        super().__init__()
        self.stop_at = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.stop_at:
            raise KeyboardInterrupt


def test_fit_or_load_resumed_history_keeps_its_first_epochs(tmp_path, monkeypatch):
    # Before: the history of a resumed run held only the epochs of the resuming call.
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x.sum(1, keepdims=True)
    with pytest.raises(KeyboardInterrupt):
        training.fit_or_load(small_model(), "resumed", x, y, epochs=4, verbose=0, callbacks=[_StopAfter(2)])
    hist = training.fit_or_load(small_model(), "resumed", x, y, epochs=4, verbose=0)
    assert len(hist["loss"]) == 4
    assert hist["loss"][-1] < hist["loss"][0]


def test_fit_or_load_keeps_dots_in_names_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x, y = np.zeros((8, 3), "float32"), np.zeros((8, 1), "float32")
    training.fit_or_load(small_model(), "run-lr0.3", x, y, epochs=1, verbose=0)
    training.fit_or_load(small_model(), "run-lr0.1", x, y, epochs=1, verbose=0)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.weights.h5"))
    assert len(names) == 2 and all("lr0." in n for n in names), names
    with pytest.raises(ValueError, match="slashes"):
        training.fit_or_load(small_model(), "a/b", x, y, epochs=1, verbose=0)


def test_fit_or_load_retrains_when_the_run_changes(tmp_path, monkeypatch):
    # Before: the checkpoint was named by the chapter alone, so raising a profile's epochs or
    # training images reloaded the smaller run's weights (a whole-book cpu build did, silently).
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x, y = np.zeros((16, 3), "float32"), np.zeros((16, 1), "float32")
    runs = [dict(epochs=1), dict(epochs=2), dict(epochs=1, batch_size=4)]
    for kwargs in runs:
        training.fit_or_load(small_model(), "run", x, y, verbose=0, **kwargs)
    training.fit_or_load(small_model(), "run", x[:8], y[:8], epochs=1, verbose=0)  # fewer images
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    wider.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    training.fit_or_load(wider, "run", x, y, epochs=1, verbose=0)  # another architecture
    slower = small_model()
    slower.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    training.fit_or_load(slower, "run", x, y, epochs=1, verbose=0)  # another learning rate
    assert len(list((tmp_path / "checkpoints").glob("run-*.weights.h5"))) == 6
    training.fit_or_load(small_model(), "run", x, y, epochs=2, verbose=0)  # the same run again: loaded
    assert len(list((tmp_path / "checkpoints").glob("run-*.weights.h5"))) == 6
    assert training.training_fingerprint(small_model(), (x, y), {"epochs": 2}) == \
        training.training_fingerprint(small_model(), (x + 1, y), {"epochs": 2})  # shapes, not contents


class HalfTrained(_util.TrainStepModel):
    """Trains its first layer only (a subset of its variables, as a GAN or an EBM step does)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = keras.layers.Dense(4), keras.layers.Dense(1)
        self.steps_traced = 0
        self.tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.tracker]

    def call(self, x):
        return self.second(self.first(x))

    def training_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.steps_traced += 1  # Python runs this once per trace (TF, JAX), once per step (torch)
        variables = self.first.trainable_variables
        loss, _, grads = _util.value_and_grad(lambda: keras.ops.mean((self(x) - y) ** 2), variables)
        self.optimizer.apply(grads, variables)
        self.tracker.update_state(loss)
        return {"loss": self.tracker.result()}


def test_fit_or_load_builds_the_optimizer_before_the_first_step(tmp_path, monkeypatch):
    # Before: TensorFlow built Adam's slots inside the first traced step, and a compiled function
    # that creates variables is traced twice; the first epoch of a small U-Net took 20 s, not 10.
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    model = HalfTrained()
    model(x[:1])
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    second = [w.copy() for w in model.second.get_weights()]
    hist = training.fit_or_load(model, "half", x, x[:, :1], epochs=2, batch_size=8, verbose=0)
    assert model.optimizer.built and hist["loss"][-1] < hist["loss"][0]
    for before, after in zip(second, model.second.get_weights()):
        np.testing.assert_array_equal(before, after)  # built on every variable, applied to a subset
    if keras.backend.backend() == "tensorflow":
        assert model.steps_traced == 1, model.steps_traced


def test_fit_or_load_needs_a_built_model():
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="build"):
        training.fit_or_load(model, "unbuilt", np.zeros((2, 3)), np.zeros((2, 1)))


def test_sample_grid_keeps_one_row_per_epoch():
    x = np.zeros((8, 3), "float32")
    grid = training.SampleGrid(lambda m: np.random.rand(4, 8, 8, 1), every=2, num_images=3)
    small_model().fit(x, np.zeros((8, 1)), epochs=4, verbose=0, callbacks=[grid])
    assert [e for e, _ in grid.grids] == [2, 4] and grid.grids[0][1].shape == (3, 8, 8, 1)
    assert [t.get_text() for t in grid.show().axes[0].texts] == ["epoch 2", "epoch 4"]


def test_timer():
    with training.Timer() as t:
        sum(range(1000))
    assert t.seconds > 0


def test_plots_return_figures_and_check_inputs():
    images = np.random.rand(5, 8, 8)
    fig = plot.image_grid(images, ncols=3, titles=list("abcde"), row_labels=["one", "two"])
    mosaic = fig.axes[0].images[0].get_array()
    assert mosaic.shape == (2 * (8 + 1 + 2) - 1, 3 * (8 + 1) - 1)  # 2 rows with title bands, 3 columns, 1-px gaps
    np.testing.assert_allclose(mosaic[2:10, 9:17], images[1], rtol=1e-6)  # image 1: row 0, column 1
    assert [t.get_text() for t in fig.axes[0].texts] == [*"abcde", "one", "two"]
    with pytest.raises(ValueError, match="row labels"):
        plot.image_grid(images, ncols=3, row_labels=["a", "b", "c"])
    assert plot.image_grid(np.random.randint(0, 4, (4, 8, 8, 1)), value_range=(0, 3)) is not None
    assert plot.image_grid(np.random.randn(3, 8, 8), value_range="each") is not None
    assert plot.training_curves({"loss": [3, 2, 1], "val_loss": [3, 2.5, 2]}) is not None
    assert plot.latent_scatter(np.random.rand(20, 2), np.arange(20) % 3, ["a", "b", "c"]) is not None
    with pytest.raises(ValueError, match="titles"):
        plot.image_grid(np.random.rand(5, 8, 8), titles=["a"])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot.latent_scatter(np.random.rand(20, 3))
    with pytest.raises(ValueError, match="not in the history"):
        plot.training_curves({"loss": [1]}, keys=["kl"])


def test_attention_map_draws_one_panel_per_head_and_checks_inputs():
    weights = np.tril(np.ones((3, 5, 5)))
    weights /= weights.sum(-1, keepdims=True)
    fig = plot.attention_map(weights, tokens=list("ab c\n"), ncols=2)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 3
    assert [t.get_text() for t in drawn[0].get_xticklabels()] == ["a", "b", "␣", "c", "↵"]
    assert len(plot.attention_map(weights[0]).axes) == 1
    with pytest.raises(ValueError, match="T, T"):
        plot.attention_map(np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="tokens"):
        plot.attention_map(weights, tokens=list("ab"))
    matplotlib.pyplot.close("all")


def test_fit_or_load_timed_reports_the_training_time_on_reload(tmp_path, monkeypatch, capsys):
    # Before: a chapter that reloaded a checkpoint printed the second the load took as training time.
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x, y = np.zeros((32, 3), "float32"), np.zeros((32, 1), "float32")
    hist, seconds = training.fit_or_load_timed(small_model(), "timed", x, y, epochs=2, verbose=0, label="toy")
    assert seconds > 0 and len(hist["loss"]) == 2
    assert "toy: trained in" in capsys.readouterr().out
    again, reloaded = training.fit_or_load_timed(small_model(), "timed", x, y, epochs=2, verbose=0, label="toy")
    assert again == hist and reloaded == seconds
    assert "loaded from the cache (trained in" in capsys.readouterr().out
    with pytest.raises(TypeError, match="label"):
        training.fit_or_load_timed(small_model(), "timed", x, y, epochs=2, verbose=0, label=3)


def test_fit_or_load_timed_counts_the_epochs_of_an_interrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    x, y = np.zeros((32, 3), "float32"), np.zeros((32, 1), "float32")
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(0.2))
    with pytest.raises(KeyboardInterrupt):
        training.fit_or_load(small_model(), "cut", x, y, epochs=4, verbose=0, callbacks=[slow, _StopAfter(3)])
    _, seconds = training.fit_or_load_timed(small_model(), "cut", x, y, epochs=4, verbose=0)
    assert seconds >= 0.2 * 2  # the two epochs finished before the interruption count too


def test_wall_clock_budget_stops_fit_and_refuses_bad_budgets():
    x, y = np.zeros((64, 3), "float32"), np.zeros((64, 1), "float32")
    budget = training.WallClockBudget(1e-6)
    small_model().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[budget])
    assert budget.steps == 1 and budget.seconds_used > 0
    for bad in (0, -1.0, True, "5"):
        with pytest.raises((TypeError, ValueError)):
            training.WallClockBudget(bad)
