"""Tests of genlib.diffusion: schedule identities, the forward process against Monte Carlo,
DDIM determinism and exactness with a perfect noise oracle, shapes, guidance, generate, serialisation."""

import keras  # noqa: I001
import numpy as np
import pytest

from genlib import diffusion as dm


def small_model(**kwargs):
    args = dict(image_shape=(16, 16, 1), widths=(8, 16), attention=True, timesteps=20, seed=0, groups=4)
    model = dm.DiffusionModel(**{**args, **kwargs})
    model.build()
    return model


@pytest.mark.parametrize("name", ["linear", "cosine", "offset_cosine"])
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_schedule_identities(name, T):
    s = dm.NoiseSchedule(name, T)
    assert s.beta.shape == (T,) and np.all(s.beta > 0) and np.all(s.beta < 1)
    assert np.all(np.diff(s.alpha_bar) < 0), "alpha_bar must decrease"
    assert 0 < s.alpha_bar[-1] and s.alpha_bar[0] <= 1
    assert s.alpha_bar[-1] < 0.05, "the chain must end (nearly) in pure noise"
    np.testing.assert_allclose(s.alpha_bar, np.cumprod(1 - s.beta))
    np.testing.assert_allclose(s.signal_rate**2 + s.noise_rate**2, 1.0)
    # The posterior variance lies between 0 and beta (beta tilde <= beta).
    assert np.all(s.posterior_variance >= 0) and np.all(s.posterior_variance <= s.beta + 1e-12)


def test_offset_cosine_end_points_and_angle():
    """The offset cosine keeps its signal rate between its end points, its angle linear in t."""
    s = dm.NoiseSchedule("offset_cosine", 200, min_signal_rate=0.05, max_signal_rate=0.9)
    np.testing.assert_allclose(s.signal_rate[[0, -1]], [0.9, 0.05])
    np.testing.assert_allclose(np.diff(np.arccos(s.signal_rate), 2), 0.0, atol=1e-12)
    # The cosine schedule, unlike it, ends at a signal rate the x0 estimate cannot invert.
    assert dm.NoiseSchedule("cosine", 200).signal_rate[-1] < 1e-3
    assert dm.NoiseSchedule("offset_cosine", 200).signal_rate[-1] == pytest.approx(0.02)
    assert dm.NoiseSchedule("offset_cosine", 1).signal_rate[0] == pytest.approx(0.02)


def test_q_posterior_is_bayes_rule():
    """mean/variance of q(x_{t-1} | x_t, x0) from the product of the two Gaussians in x_{t-1}."""
    rng = np.random.default_rng(3)
    for name in ["linear", "offset_cosine"]:
        s = dm.NoiseSchedule(name, 50)
        x0, xt = rng.normal(size=(2, 3, 3, 1)), rng.normal(size=(2, 3, 3, 1))
        for t in [1, 17, 49]:
            # q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta); q(x_{t-1} | x0) = N(sqrt(abar_prev) x0, 1 - abar_prev)
            precision = s.alpha[t] / s.beta[t] + 1 / (1 - s.alpha_bar_prev[t])
            mean = (np.sqrt(s.alpha[t]) / s.beta[t] * xt + np.sqrt(s.alpha_bar_prev[t]) / (1 - s.alpha_bar_prev[t])
                    * x0) / precision
            got_mean, got_var = dm.q_posterior(s, x0, xt, t)
            np.testing.assert_allclose(got_mean, mean, rtol=1e-9)
            assert got_var == pytest.approx(1 / precision, rel=1e-9)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="schedule must be one of"):
        dm.NoiseSchedule("quadratic", 100)
    for T in [0, -5, 2.5, True]:
        with pytest.raises(ValueError, match="timesteps"):
            dm.NoiseSchedule("cosine", T)
    with pytest.raises(ValueError, match="timesteps"):
        dm.DiffusionModel(timesteps=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        dm.DiffusionModel(schedule="sigmoid")
    with pytest.raises(ValueError, match="widths"):
        dm.DiffusionModel(widths=(8, True))
    for low, high in [(0.0, 0.9), (0.5, 0.4), (0.1, 1.0)]:
        with pytest.raises(ValueError, match="signal_rate"):
            dm.NoiseSchedule("offset_cosine", 10, min_signal_rate=low, max_signal_rate=high)
    with pytest.raises(ValueError, match="loss must be one of"):
        dm.DiffusionModel(loss="huber")


def test_l1_loss_is_the_mean_absolute_error():
    model = small_model(loss="l1")
    rng = np.random.default_rng(0)
    pred, eps = rng.normal(size=(2, 2, 16, 16, 1)).astype("float32")
    loss = keras.ops.convert_to_numpy(model.compute_loss(y_pred=(pred, eps)))
    np.testing.assert_allclose(loss, np.abs(pred - eps).mean(), rtol=1e-5)
    assert dm.DiffusionModel.from_config(model.get_config()).loss_name == "l1"


def test_q_sample_refuses_steps_outside_the_schedule():
    """Index t runs over [0, T): t = T used to fail deep inside a gather (and read zeros on a GPU)."""
    s = dm.NoiseSchedule("cosine", 20)
    x0 = np.zeros((2, 4, 4, 1), "float32")
    assert dm.q_sample(s, x0, np.array([0, 19]), x0).shape == (2, 4, 4, 1)
    for bad in ([0, 20], [-1, 3]):
        with pytest.raises(ValueError, match=r"\[0, 20\)"):
            dm.q_sample(s, x0, np.array(bad), x0)
    with pytest.raises(ValueError, match="steps t"):
        s.gather(s.signal_rate, 20)


def test_forward_process_matches_closed_form():
    """q(x_t | x_0) sampled many times has mean sqrt(abar) x0 and variance 1 - abar."""
    s = dm.NoiseSchedule("linear", 100)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (1, 4, 4, 1)).astype("float32")
    n = 20000
    for t in [0, 30, 99]:
        noise = keras.random.normal((n, 4, 4, 1), seed=t)
        xt = keras.ops.convert_to_numpy(dm.q_sample(s, np.repeat(x0, n, 0), np.full(n, t), noise))
        se = 4 * np.sqrt((1 - s.alpha_bar[t]) / n)  # four standard errors of the mean
        np.testing.assert_allclose(xt.mean(0), s.signal_rate[t] * x0[0], atol=se)
        np.testing.assert_allclose(xt.var(0), 1 - s.alpha_bar[t], rtol=0.05)


def test_chained_steps_equal_closed_form():
    """Composing the one-step Gaussians q(x_t | x_{t-1}) gives the closed-form variance 1 - abar_t."""
    s = dm.NoiseSchedule("cosine", 50)
    var = 0.0
    for t in range(50):
        var = (1 - s.beta[t]) * var + s.beta[t]
        np.testing.assert_allclose(var, 1 - s.alpha_bar[t], rtol=1e-9)


def test_sinusoidal_embedding():
    layer = dm.SinusoidalEmbedding(16)
    e = keras.ops.convert_to_numpy(layer(np.array([0, 1, 500])))
    assert e.shape == (3, 16)
    np.testing.assert_allclose(e[0, :8], 0) and np.testing.assert_allclose(e[0, 8:], 1)
    np.testing.assert_allclose(e[:, :8] ** 2 + e[:, 8:] ** 2, 1, rtol=1e-5)
    with pytest.raises(ValueError, match="even"):
        dm.SinusoidalEmbedding(7)


@pytest.mark.parametrize("size,widths,groups", [(16, (8, 16), 4), (28, (8, 16, 16), 4), (32, (8, 16), 8)])
def test_unet_preserves_shape(size, widths, groups):
    net = dm.UNet(widths=widths, groups=groups, num_classes=10)
    net.build((None, size, size, 1))
    x = np.random.default_rng(0).normal(size=(2, size, size, 1)).astype("float32")
    out = net(x, np.array([3, 7]), np.array([1, 10]))
    assert out.shape == (2, size, size, 1)
    out = net(x, np.array([3, 7]))  # no labels: the null label
    assert out.shape == (2, size, size, 1)


def test_unet_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        dm.UNet(widths=(8, 16, 16), groups=4).build((None, 30, 30, 1))  # 30 cannot be halved twice
    with pytest.raises(ValueError, match="groups"):
        dm.UNet(widths=(12, 16), groups=8)
    with pytest.raises(ValueError, match="widths"):
        dm.UNet(widths=())


def test_timestep_sequence():
    ts = dm.timestep_sequence(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and np.all(np.diff(ts) < 0)
    np.testing.assert_array_equal(dm.timestep_sequence(20, 20), np.arange(20)[::-1])
    # One step starts from pure noise at T - 1 (it used to be [0]: noise read as a nearly clean image).
    np.testing.assert_array_equal(dm.timestep_sequence(500, 1), [499])
    with pytest.raises(ValueError, match="exceed"):
        dm.timestep_sequence(10, 11)


def test_ddim_recovers_single_point_with_oracle():
    """With data = one point x*, the optimal eps is (x_t - sqrt(abar) x*) / sqrt(1 - abar): DDIM lands on x*."""
    s = dm.NoiseSchedule("cosine", 1000)
    target = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 1)).astype("float32")

    def oracle(x, t):
        a = s.gather(s.signal_rate, t)
        b = s.gather(s.noise_rate, t)
        return (x - a * target) / b

    x_T = np.random.default_rng(2).normal(size=(3, 8, 8, 1)).astype("float32")
    for steps in [1, 5, 50]:
        out = keras.ops.convert_to_numpy(dm.ddim_sample(oracle, s, x_T, steps=steps))
        # one step divides by the signal rate at T - 1 (1e-4 for this cosine): float32 round-off grows
        np.testing.assert_allclose(out, np.repeat(target, 3, 0), atol=1e-4 if steps > 1 else 1e-2)
    # DDPM with the same oracle also ends at the point (every x0 prediction is x*).
    s_short = dm.NoiseSchedule("cosine", 50)

    def oracle_short(x, t):
        return (x - s_short.gather(s_short.signal_rate, t) * target) / s_short.gather(s_short.noise_rate, t)

    out = keras.ops.convert_to_numpy(dm.ddpm_sample(oracle_short, s_short, x_T, seed=0))
    np.testing.assert_allclose(out, np.repeat(target, 3, 0), atol=1e-4)


def test_ddpm_step_mean_equals_eps_form():
    """Unclipped, the posterior-mean form equals (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha)."""
    s = dm.NoiseSchedule("linear", 100)
    rng = np.random.default_rng(0)
    x, eps = rng.normal(size=(2, 4, 4, 1)), rng.normal(size=(2, 4, 4, 1))
    for t in [0, 10, 99]:
        out, _ = dm.ddpm_step(s, x, t, eps, np.zeros_like(x))
        expected = (x - s.beta[t] / np.sqrt(1 - s.alpha_bar[t]) * eps) / np.sqrt(s.alpha[t])
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def trained():
    """One small conditional model trained once (tracing fit is the slow part) and its history."""
    model = small_model(num_classes=3, ema_decay=0.9, label_dropout=0.5)
    # Compiled, as a chapter runs it: under JAX that is where the EMA copy once shared the weights' buffers.
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    rng = np.random.default_rng(0)
    # Three classes of constant images: easy to learn, and the label matters.
    y = rng.integers(0, 3, 128)
    x = (np.ones((128, 16, 16, 1)) * (y[:, None, None, None] - 1.0) * 0.8).astype("float32")
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.ema_network.weights]
    hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0).history
    return model, hist, before


def test_training_lowers_loss_and_moves_ema(trained):
    model, hist, before = trained
    assert hist["loss"][-1] < hist["loss"][0] and hist["loss"][-1] < 1.0
    after = [keras.ops.convert_to_numpy(w) for w in model.ema_network.weights]
    weights = [keras.ops.convert_to_numpy(w) for w in model.network.weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before)), "EMA weights did not move"
    assert any(np.abs(a - w).max() > 1e-6 for a, w in zip(after, weights)), "EMA equals the weights"
    assert float(keras.ops.convert_to_numpy(model.ema_updates)) == 3 * 4
    # The optimizer never sees the EMA copy.
    assert model.ema_network.trainable_weights == []
    assert len(model.trainable_weights) == len(model.network.weights)


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not(trained):
    model = trained[0]
    x_T = model.noise(4, seed=3)
    a = model.generate(x_T=x_T, steps=5, seed=10, batch_size=2, compile=True)
    b = model.generate(x_T=x_T, steps=5, seed=99, batch_size=2, compile=True)  # another step seed: same at eta = 0
    np.testing.assert_array_equal(a, b)
    eager = model.generate(x_T=x_T, steps=5, seed=10, batch_size=2, compile=False)
    np.testing.assert_allclose(a, eager, atol=1e-4)  # XLA reorders float sums
    c = model.generate(x_T=x_T, steps=5, eta=1.0, seed=10)
    d = model.generate(x_T=x_T, steps=5, eta=1.0, seed=99)  # at eta = 1 the step noise matters
    assert np.abs(c - d).max() > 1e-3
    with pytest.raises(ValueError, match="eta"):
        model.generate(x_T=x_T, steps=5, eta=-1.0)


@pytest.mark.parametrize("kwargs", [{"steps": 4, "eta": 1.0}, {"sampler": "ddpm"}])
def test_generate_returns_seeded_arrays_in_the_data_range(trained, kwargs):
    model = trained[0]
    a = model.generate(3, seed=4, batch_size=2, **kwargs)  # two batches: each gets its own step seed
    b = model.generate(3, seed=4, batch_size=2, **kwargs)
    assert isinstance(a, np.ndarray) and a.shape == (3, 16, 16, 1) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    # Same starting noise, another seed: only the step noise differs, and it must matter.
    c = model.generate(x_T=model.noise(3, seed=4), seed=5, batch_size=2, **kwargs)
    assert np.abs(a - c).max() > 1e-3


def test_compiled_sampler_sees_new_weights(trained):
    """The compiled noise predictor reads the weights at each call, not those of its first trace."""
    model = trained[0]
    x_T = model.noise(2, seed=8)
    before = model.generate(x_T=x_T, steps=10, compile=True, use_ema=False)
    saved = [keras.ops.convert_to_numpy(w) for w in model.network.weights]
    try:
        for w in model.network.weights:
            w.assign(np.zeros(w.shape, w.dtype))  # the output convolution is zero: eps = 0
        after = model.generate(x_T=x_T, steps=10, compile=True, use_ema=False)
    finally:
        for w, value in zip(model.network.weights, saved):
            w.assign(value)
    assert np.abs(after - before).max() > 1e-3


def test_conditional_shapes_and_guidance_zero_is_unconditional(trained):
    model = trained[0]
    x_T = model.noise(6, seed=1)
    labels = np.arange(6) % 3
    uncond = model.generate(x_T=x_T, steps=4)
    zero = model.generate(x_T=x_T, steps=4, labels=labels, guidance=0.0)
    np.testing.assert_allclose(zero, uncond, atol=1e-6)
    cond = model.generate(x_T=x_T, steps=4, labels=labels, guidance=1.0)
    guided = model.generate(x_T=x_T, steps=4, labels=labels, guidance=3.0)
    assert cond.shape == guided.shape == (6, 16, 16, 1)
    assert np.abs(cond - uncond).max() > 0 and np.abs(guided - cond).max() > 0
    # Guidance is linear in w: the w = 3 noise is eps_u + 3 (eps_c - eps_u).
    t = np.full(6, 10, "int32")
    eps = {w: keras.ops.convert_to_numpy(model.predict_noise(x_T, t, labels, w)) for w in (0.0, 1.0, 3.0)}
    np.testing.assert_allclose(eps[3.0], eps[0.0] + 3 * (eps[1.0] - eps[0.0]), atol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        model.generate(x_T=x_T, steps=4, labels=labels[:3])
    with pytest.raises(ValueError, match="num_classes"):
        small_model().generate(x_T=x_T, steps=4, labels=labels)


def test_trajectory_shapes_and_end(trained):
    model = trained[0]
    final, xs, x0s = model.trajectory(3, steps=5, seed=7)
    assert final.shape == (3, 16, 16, 1) and xs.shape == (6, 3, 16, 16, 1) and x0s.shape == (5, 3, 16, 16, 1)
    np.testing.assert_allclose(final, np.clip(xs[-1], -1, 1), atol=1e-6)
    np.testing.assert_allclose(final, model.generate(3, steps=5, seed=7), atol=1e-5)


def test_evaluate_uses_the_labels(trained):
    """evaluate(x, y) scores the conditional prediction (Keras' default step predicts from x alone)."""
    model = trained[0]
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 64)
    x = (np.ones((64, 16, 16, 1)) * (y[:, None, None, None] - 1.0) * 0.8).astype("float32")
    loss = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(loss) and loss < 1.0


def test_round_trip_keeps_ema_and_samples(trained, tmp_path):
    model = trained[0]
    path = tmp_path / "diffusion.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    x_T = model.noise(3, seed=0)
    for kwargs in [{"labels": [0, 1, 2], "guidance": 2.0}, {"use_ema": False}]:
        np.testing.assert_allclose(model.generate(x_T=x_T, steps=3, **kwargs),
                                   loaded.generate(x_T=x_T, steps=3, **kwargs), atol=1e-6)
    assert loaded.get_config()["num_classes"] == 3 and loaded.schedule.timesteps == 20
    assert loaded.ema_network.trainable_weights == []


def test_model_bad_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="image"):
        model(np.zeros((2, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="sampler"):
        model.generate(2, sampler="euler")
    with pytest.raises(ValueError, match="x_T"):
        model.generate(x_T=np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="disagree"):
        model.generate(3, x_T=np.zeros((2, 16, 16, 1)))
    for bad in (0, True):
        with pytest.raises(ValueError, match="n must"):
            model.generate(bad)
    with pytest.raises(ValueError, match="ema_decay"):
        dm.DiffusionModel(ema_decay=1.0)


def test_slerp_keeps_norm_and_endpoints():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(16, 16, 1)), rng.normal(size=(16, 16, 1))
    path = dm.slerp(a, b, np.linspace(0, 1, 7))
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)
    norms = np.linalg.norm(path.reshape(7, -1), axis=1)
    assert norms.min() > 0.9 * min(np.linalg.norm(a), np.linalg.norm(b))  # a straight line would dip ~30%
    with pytest.raises(ValueError, match="same shape"):
        dm.slerp(a, b[:8], [0.5])
