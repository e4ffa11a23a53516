"""Tests of genlib.ebm: Langevin on a known Gaussian, descent without noise, the replay buffer,
clamping for inpainting, contrastive-divergence training, generate, saving, bad arguments.
Backend-neutral: they run under TensorFlow, JAX and PyTorch."""

import keras
import numpy as np
import pytest

from genlib import ebm

LAM = np.array([1.0, 4.0], "float32")  # precisions of a diagonal Gaussian
MU = np.array([1.0, -2.0], "float32")


def quadratic_energy(x):
    """E(x) = 1/2 sum_i lam_i (x_i - mu_i)^2: exp(-E) is N(mu, diag(1 / lam))."""
    # keras.ops throughout: NumPy operands would pull a PyTorch tensor that requires grad into NumPy.
    lam, mu = keras.ops.convert_to_tensor(LAM), keras.ops.convert_to_tensor(MU)
    return 0.5 * keras.ops.sum(lam * keras.ops.square(keras.ops.subtract(x, mu)), axis=-1)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_energy_gradient_of_a_quadratic_is_exact():
    x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
    np.testing.assert_allclose(_np(ebm.energy_gradient(quadratic_energy, x)), LAM * (x - MU), rtol=1e-5, atol=1e-6)


def test_langevin_samples_the_gaussian_of_a_quadratic_energy():
    step = 0.02
    sampler = ebm.LangevinSampler(step_size=step, noise_scale=1.0, num_steps=800, grad_clip=None,
                                  value_range=None, seed=1)
    n = 6000
    x = _np(sampler.run(quadratic_energy, np.zeros((n, 2), "float32")))
    # The discretised chain is Gaussian with variance 1 / (lam (1 - step lam / 4)): within 2 % of 1 / lam here.
    exact_var = 1.0 / (LAM * (1.0 - step * LAM / 4.0))
    se_mean, se_var = np.sqrt(exact_var / n), exact_var * np.sqrt(2.0 / n)
    assert np.all(np.abs(x.mean(0) - MU) < 5 * se_mean), (x.mean(0), MU)
    assert np.all(np.abs(x.var(0) - exact_var) < 5 * se_var), (x.var(0), exact_var)
    assert np.all(np.abs(x.var(0) - 1.0 / LAM) < 0.06 / LAM)
    # Independent coordinates: no spurious correlation.
    assert abs(np.corrcoef(x.T)[0, 1]) < 0.06


def test_noise_scale_sets_the_temperature():
    sampler = ebm.LangevinSampler(step_size=0.01, noise_scale=0.5, num_steps=1500, grad_clip=None,
                                  value_range=None, seed=2)
    x = _np(sampler.run(quadratic_energy, np.zeros((4000, 2), "float32")))
    # exp(-E / s^2) with s = 0.5: the variance shrinks four-fold.
    np.testing.assert_allclose(x.var(0), 0.25 / LAM, rtol=0.1)


def test_without_noise_langevin_descends_the_energy():
    sampler = ebm.LangevinSampler(step_size=0.1, noise_scale=0.0, num_steps=1, grad_clip=None, value_range=None)
    x = np.random.default_rng(3).normal(size=(16, 2)).astype("float32") * 3
    energies = [_np(quadratic_energy(x))]
    for _ in range(30):
        x = _np(sampler.run(quadratic_energy, x))
        energies.append(_np(quadratic_energy(x)))
    energies = np.stack(energies)
    assert np.all(np.diff(energies, axis=0) <= 1e-6), "energy rose during noiseless descent"
    assert np.all(energies[-1] < 0.1 * energies[0])
    # A conv net's energy too: plain gradient steps lower it.
    net = ebm.build_energy_net((8, 8, 1), filters=4)
    fn = lambda v: net(v)  # noqa: E731
    start = np.random.default_rng(4).uniform(size=(6, 8, 8, 1)).astype("float32")
    small = ebm.LangevinSampler(step_size=1e-3, noise_scale=0.0, num_steps=5, grad_clip=None, value_range=None)
    assert np.all(_np(fn(small.run(fn, start)))[:, 0] < _np(fn(start))[:, 0])


def test_run_is_seeded_and_zero_steps_returns_the_start():
    x0 = np.zeros((4, 2), "float32")
    a = _np(ebm.LangevinSampler(0.1, 1.0, 5, seed=7, value_range=None).run(quadratic_energy, x0))
    b = _np(ebm.LangevinSampler(0.1, 1.0, 5, seed=7, value_range=None).run(quadratic_energy, x0))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_np(ebm.LangevinSampler(value_range=None).run(quadratic_energy, x0, num_steps=0)),
                                  x0)


def test_each_step_draws_new_noise():
    # On a flat energy the chain is a random walk: after k steps the variance is k * sigma^2 * eps.
    # A loop that reused one step's noise (a JAX loop body reading a seed generator) would give k^2.
    def flat(x):
        return keras.ops.sum(0.0 * x, axis=-1)

    sampler = ebm.LangevinSampler(step_size=1.0, noise_scale=1.0, num_steps=16, grad_clip=None, value_range=None,
                                  seed=3)
    x = _np(sampler.run(flat, np.zeros((4000, 2), "float32")))
    np.testing.assert_allclose(x.var(0), 16.0, rtol=0.1)


def test_compiled_chain_sees_new_weights():
    # The chain is compiled once per energy; under JAX the weights must be inputs of it, not
    # constants frozen at the first call.
    net = ebm.build_mlp_energy(2, units=8, depth=1)
    sampler = ebm.LangevinSampler(step_size=0.5, noise_scale=0.0, num_steps=1, grad_clip=None, value_range=None)
    x = np.random.default_rng(8).normal(size=(5, 2)).astype("float32")
    for scale in (1.0, 3.0):
        net.layers[-1].kernel.assign(scale * np.ones((8, 1), "float32"))
        expected = x - 0.25 * _np(ebm.energy_gradient(net, x))
        np.testing.assert_allclose(_np(sampler.run(net, x)), expected, rtol=1e-5, atol=1e-6)


def test_gradient_and_value_clipping():
    far = np.full((3, 2), 100.0, "float32")
    sampler = ebm.LangevinSampler(step_size=2.0, noise_scale=0.0, num_steps=1, grad_clip=0.5, value_range=None)
    # Each coordinate moves by at most step/2 * grad_clip = 0.5.
    np.testing.assert_allclose(_np(sampler.run(quadratic_energy, far)), far - 0.5, rtol=1e-6)
    boxed = ebm.LangevinSampler(step_size=1.0, noise_scale=5.0, num_steps=10, value_range=(0.0, 1.0), seed=0)
    x = _np(boxed.run(quadratic_energy, np.full((50, 2), 0.5, "float32")))
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_clamped_pixels_never_change():
    net = ebm.build_energy_net((8, 8, 1), filters=4)
    rng = np.random.default_rng(5)
    image = rng.uniform(size=(3, 8, 8, 1)).astype("float32")
    mask = np.zeros((3, 8, 8, 1), bool)
    mask[:, :4] = True  # top half known
    x0 = np.where(mask, image, rng.uniform(size=image.shape)).astype("float32")
    sampler = ebm.LangevinSampler(step_size=50.0, noise_scale=0.5, num_steps=4, grad_clip=None, seed=0)
    states = sampler.chain(lambda v: net(v), x0, num_steps=12, keep_every=4, mask=mask)
    assert states.shape == (4, 3, 8, 8, 1)
    for state in states:
        np.testing.assert_array_equal(state[mask], image[mask])  # exactly, at every kept step
    assert not np.allclose(states[-1][~mask], x0[~mask]), "the unknown pixels should move"
    # The same through the model's compiled path, with a mask shared by the whole batch.
    model = ebm.EBM(net, sampler, buffer_size=10)
    out = model.langevin(x0, mask=mask[:1], num_steps=6)
    np.testing.assert_array_equal(out[mask], image[mask])


def test_buffer_keeps_its_size_and_restart_fraction():
    buffer = ebm.ReplayBuffer(capacity=200, restart_prob=0.25, value_range=(0.0, 1.0), seed=0)
    buffer.build((None, 3))
    buffer.update(np.arange(200), np.full((200, 3), 7.0, "float32"))  # mark every slot as "old sample"
    fresh_count, total = 0, 0
    for _ in range(40):
        x0, indices, fresh = buffer.sample(100)
        x0, indices, fresh = _np(x0), _np(indices), _np(fresh)
        assert x0.shape == (100, 3) and indices.min() >= 0 and indices.max() < 200
        # Fresh starts are uniform noise, the others stored samples.
        assert np.all(x0[fresh] < 1.0) and np.all(x0[~fresh] == 7.0)
        fresh_count, total = fresh_count + fresh.sum(), total + len(fresh)
        buffer.update(indices, np.where(fresh[:, None], 7.0, x0))
        assert tuple(buffer.images.shape) == (200, 3)
    # 4000 Bernoulli(0.25) draws: std of the fraction is 0.007.
    assert abs(fresh_count / total - 0.25) < 0.035
    x0, indices, _ = buffer.sample(5)
    buffer.update(indices, np.full((5, 3), -3.0, "float32"))
    assert np.all(_np(buffer.images)[_np(indices)] == -3.0)


def test_buffer_with_zero_or_full_restart():
    for prob, expect_fresh in [(0.0, False), (1.0, True)]:
        buffer = ebm.ReplayBuffer(capacity=10, restart_prob=prob, seed=0)
        buffer.build((None, 2))
        assert np.all(_np(buffer.sample(50)[2]) == expect_fresh)


def _tiny_ebm(seed=0):
    net = ebm.build_energy_net((8, 8, 1), filters=4)
    sampler = ebm.LangevinSampler(step_size=10.0, noise_scale=0.005, num_steps=3, seed=seed)
    return ebm.EBM(net, sampler, buffer_size=64, restart_prob=0.05, alpha=0.1, data_noise=0.005, seed=seed)


def test_training_separates_data_from_noise_and_fills_the_buffer():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.zeros((192, 8, 8, 1), "float32")
    x[:, 2:6, 2:6] = rng.uniform(0.7, 1.0, size=(192, 4, 4, 1))  # bright squares on black
    model = _tiny_ebm()
    before = _np(model.buffer.images).copy()
    model.compile(optimizer=keras.optimizers.Adam(3e-3, beta_1=0.0))
    history = model.fit(x, epochs=3, batch_size=32, verbose=0)
    assert set(history.history) == {"loss", "cd", "reg", "e_data", "e_sample"}
    assert not np.allclose(_np(model.buffer.images), before), "train_step must write chain ends to the buffer"
    noise = rng.uniform(size=(192, 8, 8, 1)).astype("float32")
    assert _np(model(x)).mean() < _np(model(noise)).mean() - 0.05


def test_generate_is_one_seeded_array_in_the_value_range():
    model = _tiny_ebm(seed=1)
    a = model.generate(7, seed=5, batch_size=4, num_steps=3)
    assert isinstance(a, np.ndarray) and a.shape == (7, 8, 8, 1) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    model.generate(3, num_steps=3)  # the noise stream moves on in between
    np.testing.assert_array_equal(model.generate(7, seed=5, batch_size=4, num_steps=3), a)
    assert not np.allclose(model.generate(7, seed=6, batch_size=4, num_steps=3), a)
    x0, samples = model.generate(7, seed=5, batch_size=4, num_steps=3, return_start=True)
    np.testing.assert_array_equal(samples, a)
    assert x0.shape == a.shape and not np.allclose(x0, a)
    np.testing.assert_array_equal(model.generate(2, seed=5, num_steps=0), x0[:2])  # no steps: the starts


def test_round_trip_through_keras_file(tmp_path):
    model = _tiny_ebm(seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype("float32"), epochs=1, batch_size=16,
              verbose=0)
    path = tmp_path / "ebm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ebm.EBM)
    x = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(_np(model(x)), _np(loaded(x)))
    np.testing.assert_array_equal(_np(model.buffer.images), _np(loaded.buffer.images))
    assert loaded.sampler.get_config() == model.sampler.get_config()
    assert loaded.alpha == model.alpha and loaded.buffer.restart_prob == model.buffer.restart_prob
    # Langevin without noise is deterministic: both models take the same steps.
    quiet = {"noise_scale": 0.0}
    for m in (model, loaded):
        m.sampler = ebm.LangevinSampler.from_config({**m.sampler.get_config(), **quiet})
    np.testing.assert_allclose(model.langevin(x, num_steps=3), loaded.langevin(x, num_steps=3), atol=1e-6)


def test_sampler_and_buffer_configs_round_trip():
    s = ebm.LangevinSampler(step_size=3.0, noise_scale=0.1, num_steps=7, grad_clip=None, value_range=(-1, 1), seed=4)
    assert ebm.LangevinSampler.from_config(s.get_config()).get_config() == s.get_config()
    b = ebm.ReplayBuffer(capacity=12, restart_prob=0.3, value_range=(-1, 1), seed=2)
    assert ebm.ReplayBuffer.from_config(b.get_config()).get_config() == b.get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"step_size": 0.0}, "step_size"),
    ({"step_size": -1.0}, "step_size"),
    ({"noise_scale": -0.1}, "noise_scale"),
    ({"num_steps": 2.5}, "num_steps"),
    ({"num_steps": True}, "num_steps"),
    ({"grad_clip": 0.0}, "grad_clip"),
    ({"value_range": (1.0, 0.0)}, "value_range"),
    ({"value_range": "unit"}, "value_range"),
])
def test_sampler_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ebm.LangevinSampler(**kwargs)


def test_bad_arguments_elsewhere():
    with pytest.raises(ValueError, match="restart_prob"):
        ebm.ReplayBuffer(capacity=10, restart_prob=1.5)
    with pytest.raises(ValueError, match="restart_prob"):
        ebm.ReplayBuffer(capacity=10, restart_prob=True)  # a bool is not a probability
    with pytest.raises(ValueError, match="capacity"):
        ebm.ReplayBuffer(capacity=0)
    with pytest.raises(ValueError, match="smooth"):
        ebm.build_energy_net((16, 16, 1), activation="relu")
    with pytest.raises(ValueError, match="image_shape"):
        ebm.build_energy_net((16, 16))
    with pytest.raises(ValueError, match="energy_net"):
        ebm.EBM(keras.layers.Dense(1))
    two_outputs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one energy per example"):
        ebm.EBM(two_outputs)
    with pytest.raises(ValueError, match="sampler"):
        ebm.EBM(ebm.build_mlp_energy(2), sampler="langevin")
    sampler = ebm.LangevinSampler(value_range=None)
    with pytest.raises(ValueError, match="mask must be boolean"):
        sampler.run(quadratic_energy, np.zeros((2, 2), "float32"), mask=np.ones((2, 2), "float32"))
    with pytest.raises(ValueError, match="float"):
        sampler.run(quadratic_energy, np.zeros((2, 2), "int32"))
    model = ebm.EBM(ebm.build_mlp_energy(2), buffer_size=4)
    with pytest.raises(ValueError, match="shape"):
        model.langevin(np.zeros((3, 5), "float32"))
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        model.generate(0)
    with pytest.raises(ValueError, match="alpha"):
        ebm.EBM(ebm.build_mlp_energy(2), alpha=-1.0)
