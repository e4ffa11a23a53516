"""Tests of genlib.flow_matching: the path and its target against autodiff, the solvers against exact
Gaussian flows and their orders of convergence, training, guidance, sampling, reflow, serialisation."""

import keras  # noqa: I001
import numpy as np
import pytest

from genlib import _util
from genlib import flow_matching as fm


def small_model(**kwargs):
    args = dict(image_shape=(8, 8, 1), widths=(8, 16), attention=True, seed=0, groups=4)
    model = fm.FlowMatchingModel(**{**args, **kwargs})
    model.build()
    return model


def test_target_is_the_paths_time_derivative():
    """velocity_target(x0, eps) = d interpolate(x0, eps, t) / dt, by autodiff, at random t."""
    rng = np.random.default_rng(0)
    x0, eps = (rng.normal(size=(5, 4, 4, 2)).astype("float32") for _ in range(2))
    t = rng.uniform(0, 1, 5).astype("float32")
    target = keras.ops.convert_to_numpy(fm.velocity_target(x0, eps))
    for _ in range(3):  # random projections: d <w, x_t> / dt = <w, dx_t/dt> for every w
        w = rng.normal(size=x0.shape).astype("float32")
        wt = keras.ops.convert_to_tensor(w)
        grad = _util.input_gradient(lambda s, w=wt: keras.ops.sum(fm.interpolate(x0, eps, s) * w, axis=(1, 2, 3)), t)
        grad = keras.ops.convert_to_numpy(keras.ops.stop_gradient(grad))  # torch: a tensor that requires grad
        np.testing.assert_allclose(grad, (target * w).sum(axis=(1, 2, 3)), rtol=1e-4, atol=1e-4)
    # The ends of the path: data at t = 0, noise at t = 1.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fm.interpolate(x0, eps, 0.0)), x0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fm.interpolate(x0, eps, 1.0)), eps)


def gaussian_velocity(mu, s):
    """The exact marginal velocity E[eps - x0 | x_t] for data N(mu, s^2) (per element) and noise N(0, 1)."""

    mu, s = keras.ops.convert_to_tensor(mu), keras.ops.convert_to_tensor(s)

    def v(x, t):
        t = keras.ops.reshape(keras.ops.cast(t, "float32"), (-1, 1))
        var = (1 - t) ** 2 * s**2 + t**2  # Var x_t
        cov = t - (1 - t) * s**2  # Cov(x_t, eps - x0)
        return -mu + cov / var * (x - (1 - t) * mu)

    return v


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_exact_gaussian_field_lands_on_the_data_moments(solver):
    """From N(0, 1) at t = 1, the ODE with the exact marginal velocity ends at N(mu, s^2) at t = 0."""
    mu, s = np.array([1.5, -0.5, 0.0], "float32"), np.array([0.5, 2.0, 0.1], "float32")
    noise = np.random.default_rng(1).normal(size=(20000, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(fm.ode_sample(gaussian_velocity(mu, s), noise, steps=200, solver=solver))
    np.testing.assert_allclose(out.mean(0), mu, atol=0.04)
    np.testing.assert_allclose(out.std(0), s, rtol=0.03)
    # Each sample is the deterministic transport of its noise: x0 = mu + s * eps for this flow.
    np.testing.assert_allclose(out, mu + s * noise, rtol=0.02, atol=0.02)


def test_heun_error_shrinks_four_times_per_doubling_euler_two():
    """dx/dt = lam x from t = 1 to 0: x(0) = x(1) exp(-lam). Euler is first order, Heun second."""
    lam = 1.3
    x1 = np.ones((1, 1), "float32")
    exact = np.exp(-lam)

    def v(x, t):
        return lam * x

    errors = {s: [abs(float(keras.ops.convert_to_numpy(fm.ode_sample(v, x1, n, s))[0, 0]) - exact)
                  for n in (8, 16, 32)] for s in fm.SOLVERS}
    for solver, low, high in [("euler", 1.8, 2.2), ("heun", 3.6, 4.4)]:
        ratios = np.array(errors[solver][:-1]) / np.array(errors[solver][1:])
        assert np.all((ratios > low) & (ratios < high)), (solver, ratios)
    assert errors["heun"][0] < errors["euler"][-1]  # 8 Heun steps beat 32 Euler steps here


def test_time_sampling():
    t_u = keras.ops.convert_to_numpy(fm.sample_time(20000, "uniform", seed=0))
    t_l = keras.ops.convert_to_numpy(fm.sample_time(20000, "logit_normal", seed=0))
    assert t_u.min() >= 0 and t_u.max() <= 1 and abs(t_u.mean() - 0.5) < 0.01
    assert t_l.min() > 0 and t_l.max() < 1 and abs(np.median(t_l) - 0.5) < 0.01
    # The logit-normal puts more mass in the middle than the uniform does.
    assert np.mean(np.abs(t_l - 0.5) < 0.25) > np.mean(np.abs(t_u - 0.5) < 0.25) + 0.1
    shifted = keras.ops.convert_to_numpy(fm.sample_time(20000, "logit_normal", seed=0, mean=1.0))
    assert np.median(shifted) > 0.7
    with pytest.raises(ValueError, match="time_sampling"):
        fm.sample_time(4, "beta")


def test_untrained_model_scores_the_trivial_loss():
    """The U-Net's output layer starts at zero: v = 0 scores E[(eps - x0)^2] = 1 + E[x0^2] per pixel."""
    model = small_model()
    x0 = np.full((512, 8, 8, 1), 0.5, "float32")
    loss = float(keras.ops.convert_to_numpy(model.compute_loss(x0, training=False)))
    assert abs(loss - 1.25) < 0.03, loss


@pytest.fixture(scope="module")
def trained():
    """A small conditional model trained once on three classes of constant images."""
    model = small_model(num_classes=3, ema_decay=0.9, label_dropout=0.5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 128)
    x = (np.ones((128, 8, 8, 1)) * (y[:, None, None, None] - 1.0) * 0.8).astype("float32")
    hist = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    return model, hist, x, y


def test_training_lowers_loss_and_moves_ema(trained):
    model, hist, x, _ = trained
    trivial = 1 + float(np.mean(x**2))
    assert hist["loss"][-1] < hist["loss"][0] and hist["loss"][-1] < 0.8 * trivial, hist
    assert float(keras.ops.convert_to_numpy(model.ema_updates)) == 4 * 4
    assert model.ema_network.trainable_weights == []
    ema = [keras.ops.convert_to_numpy(w) for w in model.ema_network.weights]
    assert any(np.abs(e - keras.ops.convert_to_numpy(w)).max() > 1e-6 for e, w in zip(ema, model.network.weights))


def test_guidance_zero_is_unconditional_and_linear_in_w(trained):
    model = trained[0]
    noise = model.noise(6, seed=1)
    labels = np.arange(6) % 3
    t = np.full(6, 0.6, "float32")
    v = {w: keras.ops.convert_to_numpy(model.predict_velocity(noise, t, labels, w)) for w in (0.0, 1.0, 3.0)}
    uncond = keras.ops.convert_to_numpy(model.predict_velocity(noise, t))
    np.testing.assert_allclose(v[0.0], uncond, atol=1e-6)
    assert np.abs(v[1.0] - uncond).max() > 1e-3, "the label changes nothing"
    np.testing.assert_allclose(v[3.0], v[0.0] + 3 * (v[1.0] - v[0.0]), atol=1e-5)
    a = model.generate(noise=noise, steps=4, labels=labels, guidance=0.0)
    np.testing.assert_allclose(a, model.generate(noise=noise, steps=4), atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        model.generate(noise=noise, steps=4, labels=labels[:3])
    with pytest.raises(ValueError, match="num_classes"):
        small_model().generate(noise=noise, steps=4, labels=labels)


def test_generate_is_seeded_clipped_and_compiled_equals_eager(trained):
    model = trained[0]
    a = model.generate(5, seed=4, batch_size=2, steps=6, solver="heun", compile=True)
    b = model.generate(5, seed=4, batch_size=3, steps=6, solver="heun", compile=False)
    assert isinstance(a, np.ndarray) and a.shape == (5, 8, 8, 1) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-4)
    c = model.generate(5, seed=5, steps=6)
    assert np.abs(a - c).max() > 1e-3
    final, xs = model.trajectory(3, seed=7, steps=5, solver="heun")
    assert xs.shape == (6, 3, 8, 8, 1)
    np.testing.assert_allclose(xs[0], model.noise(3, seed=7))
    np.testing.assert_allclose(final, np.clip(xs[-1], -1, 1), atol=1e-6)
    np.testing.assert_allclose(final, model.generate(3, seed=7, steps=5, solver="heun"), atol=1e-5)


def test_reflow_pairs_train_with_a_fixed_coupling(trained):
    model = trained[0]
    noise, samples = fm.reflow_pairs(model, 32, steps=4, seed=3)
    assert noise.shape == samples.shape == (32, 8, 8, 1)
    np.testing.assert_allclose(samples, model.generate(noise=noise, steps=4, solver="heun"), atol=1e-5)
    student = small_model(seed=1)
    student.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = student.fit({"x0": samples, "noise": noise}, epochs=2, batch_size=16, verbose=0).history
    assert np.isfinite(hist["loss"]).all()
    with pytest.raises(ValueError, match="x0"):
        student.compute_loss({"noise": noise})


def test_round_trip(trained, tmp_path):
    model = trained[0]
    path = tmp_path / "fm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, fm.FlowMatchingModel) and loaded.num_classes == 3
    for k in ("time_sampling", "clip", "ema_decay", "image_shape"):
        assert getattr(loaded, k) == getattr(model, k)
    labels = np.arange(4) % 3
    np.testing.assert_allclose(loaded.generate(4, seed=1, steps=3, labels=labels, guidance=2.0),
                               model.generate(4, seed=1, steps=3, labels=labels, guidance=2.0), atol=1e-5)
    unbounded = small_model(clip=None, time_sampling="logit_normal")
    unbounded.save(tmp_path / "u.keras")
    again = keras.saving.load_model(tmp_path / "u.keras")
    assert again.clip is None and again.time_sampling == "logit_normal"


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_sampling"):
        fm.FlowMatchingModel(time_sampling="cosine")
    with pytest.raises(ValueError, match="clip"):
        fm.FlowMatchingModel(clip=(1.0, -1.0))
    with pytest.raises(ValueError, match="logit_std"):
        fm.FlowMatchingModel(logit_std=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        fm.FlowMatchingModel(ema_decay=1.0)
    with pytest.raises(ValueError, match="image_shape"):
        fm.FlowMatchingModel(image_shape=(8, 8))
    with pytest.raises(ValueError, match="divisible"):
        small_model(image_shape=(6, 6, 1), widths=(8, 16, 16))
    model = small_model()
    for steps in (0, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            model.generate(2, steps=steps)
    with pytest.raises(ValueError, match="solver"):
        model.generate(2, solver="rk4")
    with pytest.raises(ValueError, match="noise must have shape"):
        model.generate(noise=np.zeros((2, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="disagree"):
        model.generate(3, noise=np.zeros((2, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="expected images"):
        model.compute_loss(np.zeros((2, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="solver"):
        fm.ode_sample(lambda x, t: x, np.zeros((1, 2)), 2, "midpoint")


def test_cross_attention_model_trains_guides_and_round_trips(tmp_path):
    """A token-conditioned (cross-attention) model: fit(x, (context, mask)), guidance, null = all padding."""
    model = small_model(image_shape=(4, 4, 2), widths=(8, 16), attention=False, context_dim=6, context_heads=2,
                        clip=None, label_dropout=0.3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    x = (np.ones((64, 4, 4, 2)) * (2.0 * y[:, None, None, None] - 1.0)).astype("float32")
    context = np.zeros((64, 3, 6), "float32")
    context[np.arange(64), 0, y] = 1.0
    mask = np.array([[True, True, False]] * 64)
    hist = model.fit(x, (context, mask), epochs=3, batch_size=16, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    xt = rng.normal(size=(4, 4, 4, 2)).astype("float32")
    t = np.full(4, 0.5, "float32")
    labels = (context[:4], mask[:4])
    v = {w: keras.ops.convert_to_numpy(model.predict_velocity(xt, t, labels, guidance=w)) for w in (0.0, 1.0, 3.0)}
    null = (context[:4], np.zeros_like(mask[:4]))
    np.testing.assert_allclose(v[0.0], keras.ops.convert_to_numpy(model.predict_velocity(xt, t, null, 1.0)),
                               atol=1e-5)
    np.testing.assert_allclose(v[3.0], v[0.0] + 3.0 * (v[1.0] - v[0.0]), atol=1e-4)
    out = model.generate(4, seed=0, steps=3, labels=labels, guidance=2.0, batch_size=3)
    assert out.shape == (4, 4, 4, 2)
    np.testing.assert_allclose(out, model.generate(4, seed=0, steps=3, labels=labels, guidance=2.0, compile=True),
                               atol=1e-4)
    path = tmp_path / "ctx.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.context_dim == 6
    np.testing.assert_allclose(loaded.generate(4, seed=0, steps=3, labels=labels, guidance=2.0), out, atol=1e-5)
    with pytest.raises(ValueError, match="context must be"):
        model.generate(4, steps=2, labels=(context[:4, :, :5], mask[:4]))
    with pytest.raises(ValueError, match="labels = \\(context"):
        model.generate(4, steps=2, labels=context[:4])
    with pytest.raises(ValueError, match="4 starting points but 3"):
        model.generate(4, steps=2, labels=(context[:3], mask[:3]))
