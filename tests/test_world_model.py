"""World models: the MDN's likelihood and sampler, M's NumPy step, the dream env, CMA-ES, rollouts."""

import math
import sys

import keras
import numpy as np
import pytest

from genlib import environments as envs
from genlib import vae
from genlib import world_model as wm


def _mixture(seed=0, shape=(3,), k=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape + (k,)).astype("float32"), rng.normal(size=shape + (k,)).astype("float32") * 3,
            rng.normal(size=shape + (k,)).astype("float32") * 0.3 - 0.5)


def test_mdn_nll_one_component_is_the_gaussian_nll():
    z = np.array([[0.3, -1.2]], "float32")
    mu = np.array([[[0.5], [1.0]]], "float32")
    log_sigma = np.array([[[-0.2], [0.4]]], "float32")
    logit = np.full_like(mu, 7.0)  # one component: its weight is 1 whatever its logit
    got = keras.ops.convert_to_numpy(wm.mdn_nll(z, logit, mu, log_sigma))
    sigma = np.exp(log_sigma[..., 0])
    hand = 0.5 * ((z - mu[..., 0]) / sigma) ** 2 + np.log(sigma) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(got, hand, rtol=1e-5)


def test_mdn_nll_matches_a_monte_carlo_density():
    logit, mu, log_sigma = _mixture(1, shape=(1,), k=3)
    pi = np.exp(logit[0]) / np.exp(logit[0]).sum()
    rng = np.random.default_rng(0)
    n = 400_000
    k = rng.choice(3, size=n, p=pi)
    draws = mu[0, k] + np.exp(log_sigma[0, k]) * rng.standard_normal(n)
    counts, edges = np.histogram(draws, bins=60, range=(mu.min() - 1, mu.max() + 1))
    centres = (edges[:-1] + edges[1:]) / 2
    empirical = counts / (n * np.diff(edges))
    nll = keras.ops.convert_to_numpy(wm.mdn_nll(centres[:, None], np.repeat(logit, 60, 0), np.repeat(mu, 60, 0),
                                                np.repeat(log_sigma, 60, 0)))[:, 0]
    dense = empirical > 0.05
    np.testing.assert_allclose(empirical[dense], np.exp(-nll)[dense], rtol=0.08)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_mdn_sample_reproduces_weights_and_moments(tau):
    logit = np.array([[0.0, 1.0, -0.5]], "float32")
    mu = np.array([[-20.0, 0.0, 20.0]], "float32")  # far apart: each draw's component is its nearest mean
    log_sigma = np.log(np.array([[1.0, 2.0, 0.5]], "float32"))
    n = 60_000
    draws = wm.mdn_sample(np.repeat(logit, n, 0), np.repeat(mu, n, 0), np.repeat(log_sigma, n, 0), tau, rng=0)
    pi = np.exp(logit[0] / tau) / np.exp(logit[0] / tau).sum()
    comp = np.abs(draws[:, None] - mu[0][None]).argmin(1)
    np.testing.assert_allclose(np.bincount(comp, minlength=3) / n, pi, atol=0.01)
    for j in range(3):
        sel = draws[comp == j]
        np.testing.assert_allclose(sel.mean(), mu[0, j], atol=0.1)
        np.testing.assert_allclose(sel.var(), tau * np.exp(2 * log_sigma[0, j]), rtol=0.08)
    # Seeded: the same rng seed gives the same draws.
    np.testing.assert_array_equal(draws[:50], wm.mdn_sample(np.repeat(logit, n, 0), np.repeat(mu, n, 0),
                                                            np.repeat(log_sigma, n, 0), tau, rng=0)[:50])


def _memory(d=3, a=2, units=8, k=2, seed=0):
    keras.utils.set_random_seed(seed)
    m = wm.MDNRNN(d, a, units=units, num_mixtures=k)
    m.build()
    return m


def test_memory_step_equals_the_keras_model():
    m = _memory()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5)).astype("float32")
    x[..., 3:] = np.eye(2)[rng.integers(0, 2, (2, 5))]
    want = {k: keras.ops.convert_to_numpy(v) for k, v in m(x).items()}
    step = wm.MemoryStep(m)
    state = step.initial_state(2)
    for t in range(5):
        head, state = step(x[:, t, :3], x[:, t, 3:], state)
        for key in want:
            np.testing.assert_allclose(head[key], want[key][:, t], atol=1e-5)


def test_mdnrnn_trains_and_round_trips(tmp_path):
    m = _memory()
    rng = np.random.default_rng(0)
    z = [np.cumsum(rng.normal(size=(7, 3)), 0).astype("float32") for _ in range(4)]
    actions = [np.eye(2, dtype="float32")[rng.integers(0, 2, 6)] for _ in range(4)]
    x, y = wm.sequences(z, actions, [np.ones(6, "float32")] * 4, [np.r_[np.zeros(5), 1.0]] * 4, length=4)
    assert x.shape == (8, 4, 5) and y.shape == (8, 4, 6)
    assert y[..., -1].sum() == 24  # the mask covers the 4 x 6 real steps, not the padding
    m.compile(keras.optimizers.Adam(1e-2))
    before = m.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    m.fit(x, y, batch_size=8, epochs=30, verbose=0)
    after = m.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after < before - 1.0, (before, after)
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)["mu"]), keras.ops.convert_to_numpy(m(x)["mu"]),
                               atol=1e-6)
    assert loaded.get_config()["num_mixtures"] == 2
    dreams = loaded.generate(5, seed=3, steps=4, initial_z=z[0][:1])
    assert dreams.shape == (5, 5, 3)
    np.testing.assert_array_equal(dreams, m.generate(5, seed=3, steps=4, initial_z=z[0][:1]))


def test_static_baseline_by_hand():
    z = [np.array([[0.0], [1.0], [3.0]])]  # steps 1 and 2: variance (1 + 4) / 2
    var = 2.5
    hand = np.mean([0.5 * (d**2 / var + math.log(var) + math.log(2 * math.pi)) for d in (1.0, 2.0)])
    assert wm.static_baseline_nll(z, z) == pytest.approx(hand)


def test_cma_es_improves_a_quadratic():
    pytest.importorskip("cma")
    target = np.linspace(-1, 1, 6)
    objective = lambda p: -np.sum((p - target) ** 2, axis=1)
    best, history = wm.cma_es(objective, 6, generations=40, popsize=10, sigma0=0.5, seed=1, progress=False)
    assert objective(best[None])[0] > -1e-2 and objective(np.zeros((1, 6)))[0] < -2
    assert history["best_score"][-1] > history["best_score"][0]
    again, _ = wm.cma_es(objective, 6, generations=40, popsize=10, sigma0=0.5, seed=1, progress=False)
    np.testing.assert_array_equal(best, again)


def test_linear_controller():
    gym = pytest.importorskip("gymnasium")
    c = wm.LinearController(3, gym.spaces.Discrete(2))
    assert c.num_params == 4
    params = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    np.testing.assert_array_equal(c.act(params, np.array([[2.0, 0, 0], [2.0, 0, 0]])), [1, 0])
    box = wm.LinearController(2, gym.spaces.Box(-2.0, 2.0, (3,)))
    out = box.act(np.zeros((4, box.num_params)), np.ones((4, 2)))
    assert out.shape == (4, 3) and np.allclose(out, 0.0)
    with pytest.raises(ValueError, match="params must have shape"):
        c.act(np.zeros((1, 5)), np.zeros((1, 3)))


def _dream_env(seed=0):
    gym = pytest.importorskip("gymnasium")
    m = _memory(seed=seed)
    return wm.DreamEnv(m, np.zeros((4, 3), "float32") + np.arange(4)[:, None], gym.spaces.Discrete(2),
                       temperature=1.0, max_steps=6)


def test_dream_env_follows_the_gymnasium_api():
    gym = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    env = _dream_env()
    assert isinstance(env, gym.Env)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains(obs) and isinstance(info, dict)
    out = env.step(env.action_space.sample())
    assert len(out) == 5 and isinstance(out[1], float) and isinstance(out[2], bool) and isinstance(out[3], bool)

    def episode(seed):
        obs, _ = env.reset(seed=seed)
        seen = [obs]
        for t in range(6):
            obs, reward, terminated, truncated, _ = env.step(t % 2)
            seen.append(obs)
            if terminated or truncated:
                break
        return np.stack(seen)

    np.testing.assert_array_equal(episode(3), episode(3))
    assert not np.array_equal(episode(3), episode(4))
    with pytest.raises(ValueError, match="temperature"):
        wm.DreamEnv(env.memory, env.initial_z, env.action_space, temperature=0.0)
    with pytest.raises(ValueError, match="action_dim"):
        wm.DreamEnv(env.memory, env.initial_z, gym.spaces.Discrete(3))


def test_evaluate_dream_is_seeded():
    m = _memory()
    z0 = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    params = np.random.default_rng(1).normal(size=(3, (3 + 8 + 1) * 1))
    pytest.importorskip("gymnasium")
    a = wm.evaluate_dream(m, params, z0, episodes=4, seed=2, max_steps=20)
    b = wm.evaluate_dream(m, params, z0, episodes=4, seed=2, max_steps=20)
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(a, b)


def test_rollouts_are_seeded_and_real_evaluation_runs():
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    a = envs.collect_rollouts("CartPole-v1", 2, seed=7, size=(16, 32), max_steps=15, progress=False)
    b = envs.collect_rollouts("CartPole-v1", 2, seed=7, size=(16, 32), max_steps=15, progress=False)
    for key in ("frames", "actions", "rewards", "terminated"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)
    frames = a["frames"][0]
    assert frames.shape[1:] == (16, 32, 1) and frames.dtype == np.float32 and 0 <= frames.min() <= frames.max() <= 1
    assert len(frames) == len(a["actions"][0]) + 1 and a["actions"][0].shape[1] == 2
    c = envs.collect_rollouts("CartPole-v1", 2, seed=8, size=(16, 32), max_steps=15, progress=False)
    assert not all(np.array_equal(x, y) for x, y in zip(a["actions"], c["actions"]))

    keras.utils.set_random_seed(0)
    vision = vae.VAE(vae.build_encoder((16, 32, 1), 3, filters=(4, 8), dense_units=0),
                     vae.build_decoder(3, (16, 32, 1), filters=(8, 4), dense_units=0))
    m = _memory()
    params = np.zeros((2, 3 + 8 + 1))
    params[1, -1] = 1.0  # always push right: the pole falls within a few dozen steps
    returns = wm.evaluate_real(vision, m, params, "CartPole-v1", episodes=2, seed=0, size=(16, 32), max_steps=60)
    assert returns.shape == (2, 2) and np.all(returns >= 1) and np.all(returns <= 60)
    np.testing.assert_array_equal(returns, wm.evaluate_real(vision, m, params, "CartPole-v1", episodes=2, seed=0,
                                                            size=(16, 32), max_steps=60))
    rand = wm.evaluate_random("CartPole-v1", episodes=3, seed=4, size=(16, 32), max_steps=60)
    assert rand.shape == (3,) and np.all(rand >= 1)
    np.testing.assert_array_equal(rand, wm.evaluate_random("CartPole-v1", episodes=3, seed=4, size=(16, 32),
                                                           max_steps=60))


def test_build_vision_starts_at_the_mean_intensity_and_dreams_decode():
    vision = wm.build_vision((8, 16, 1), 3, filters=(4,), dense_units=0, mean_intensity=0.9, seed=0)
    assert isinstance(vision, vae.VAE)
    assert float(keras.ops.convert_to_numpy(vision.beta_schedule(0))) == pytest.approx(0.1)
    # With zero weights in, the decoder's output is its bias: the mean intensity.
    out = keras.ops.convert_to_numpy(vision.decoder.get_layer("mean").bias)
    np.testing.assert_allclose(1 / (1 + np.exp(-out)), 0.9, rtol=1e-5)
    with pytest.raises(ValueError, match="mean_intensity"):
        wm.build_vision((8, 16, 1), 3, mean_intensity=1.0)
    m = _memory()
    actions = np.eye(2, dtype="float32")[[0, 1, 1, 0]]
    codes = wm.dream_codes(m, np.zeros(3), actions, temperature=0.5, seed=1)
    assert codes.shape == (5, 3) and np.all(codes[0] == 0)
    np.testing.assert_array_equal(codes, wm.dream_codes(m, np.zeros(3), actions, temperature=0.5, seed=1))
    with pytest.raises(ValueError, match="expected z0"):
        wm.dream_codes(m, np.zeros(4), actions)


def test_area_resize_averages_cells():
    img = np.arange(16, dtype="float32").reshape(4, 4)
    np.testing.assert_allclose(envs.area_resize(img, 2, 2), [[2.5, 4.5], [10.5, 12.5]])


def test_bad_arguments_give_clear_errors(monkeypatch):
    logit, mu, log_sigma = _mixture()
    with pytest.raises(ValueError, match="temperature"):
        wm.mdn_sample(logit, mu, log_sigma, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        wm.mdn_sample(logit, mu[..., :2], log_sigma)
    with pytest.raises(ValueError, match="latent_dim"):
        wm.MDNRNN(0, 2)
    with pytest.raises(ValueError, match="num_mixtures"):
        wm.MDNRNN(2, 2, num_mixtures=True)
    with pytest.raises(ValueError, match=r"inputs \[z, a\] must have shape"):
        _memory()(np.zeros((1, 2, 4), "float32"))
    with pytest.raises(ValueError, match="one more code than actions"):
        wm.sequences([np.zeros((3, 2))], [np.zeros((3, 1))], [np.zeros(3)], [np.zeros(3)])
    with pytest.raises(ValueError, match="popsize"):
        wm.cma_es(lambda p: p[:, 0], 3, popsize=1)
    with pytest.raises(ValueError, match="size"):
        envs.frame_size((32, 0))
    with pytest.raises(ValueError, match="initial_z"):
        wm.evaluate_dream(_memory(), np.zeros((1, 12)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="package"):
        envs.require("numpy")
    monkeypatch.setitem(sys.modules, "cma", None)  # as if cma were not installed
    with pytest.raises(ImportError, match=r"pip install .*cma"):
        envs.require("cma")
