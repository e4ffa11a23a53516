import math

import keras
import numpy as np
import pytest
from keras import ops

from genlib import vae
from genlib._util import value_and_grad

IMAGE_SHAPE = (8, 8, 1)


def small_vae(latent_dim=3, **kwargs):
    encoder = vae.build_encoder(IMAGE_SHAPE, latent_dim, filters=(4,), dense_units=8)
    decoder = vae.build_decoder(latent_dim, IMAGE_SHAPE, filters=(4,), dense_units=8)
    return vae.VAE(encoder, decoder, seed=0, **kwargs)


def images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *IMAGE_SHAPE)).astype("float32")


# --- the math ------------------------------------------------------------------


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4)).astype("float32")
    log_var = rng.normal(scale=0.7, size=(3, 4)).astype("float32")
    closed = ops.convert_to_numpy(vae.gaussian_kl(mu, log_var))
    z = mu + np.exp(0.5 * log_var) * rng.normal(size=(200_000, 3, 4))
    log_q = -0.5 * ((z - mu) ** 2 / np.exp(log_var) + log_var + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).mean(0)
    stderr = (log_q - log_p).std(0) / math.sqrt(len(z))
    assert np.all(np.abs(closed - monte_carlo) < 5 * stderr + 1e-4)
    # Zero exactly at the prior, positive elsewhere.
    assert ops.convert_to_numpy(vae.gaussian_kl(np.zeros((1, 2)), np.zeros((1, 2)))).max() == pytest.approx(0.0)
    assert closed.min() > 0


def decoder_log_prob(x, x_mean, log_sigma):
    """log p(x|z) of the Gaussian decoder per image, computed independently with SciPy: (batch,)."""
    from scipy import stats

    x_mean, sigma = ops.convert_to_numpy(x_mean), np.exp(ops.convert_to_numpy(log_sigma))
    return stats.norm.logpdf(np.asarray(x, "float64"), x_mean, sigma).reshape(len(x), -1).sum(1)


def test_sampling_has_requested_mean_and_variance():
    n = 100_000
    mean = np.tile(np.array([[-1.0, 0.0, 2.5]], "float32"), (n, 1))
    log_var = np.tile(np.log(np.array([[0.25, 1.0, 4.0]], "float32")), (n, 1))
    z = ops.convert_to_numpy(vae.Sampling(seed=3)([mean, log_var]))
    np.testing.assert_allclose(z.mean(0), mean[0], atol=4 * 2.0 / math.sqrt(n))
    np.testing.assert_allclose(z.var(0), np.exp(log_var[0]), rtol=0.03)


def test_sampling_gradient_flows_to_mean_and_log_var():
    mean, log_var = keras.Variable(np.zeros((4, 2), "float32")), keras.Variable(np.zeros((4, 2), "float32"))
    sampling = vae.Sampling(seed=0)

    def loss():
        z = sampling([mean, log_var])
        return ops.sum(z), z

    _, z, (g_mean, g_log_var) = value_and_grad(loss, [mean, log_var])
    np.testing.assert_allclose(ops.convert_to_numpy(g_mean), 1.0)
    eps = ops.convert_to_numpy(z)  # with mean 0 and unit variance, z is eps; dz/dlog_var = eps / 2
    np.testing.assert_allclose(ops.convert_to_numpy(g_log_var), 0.5 * eps, rtol=1e-5)


# --- schedules -------------------------------------------------------------------


def values(schedule, steps):
    return ops.convert_to_numpy(schedule(np.asarray(steps)))


def test_constant_schedule():
    np.testing.assert_allclose(values(vae.ConstantBeta(0.3), [0, 10, 10_000]), 0.3)


def test_linear_warmup_values():
    s = vae.LinearWarmup(beta=2.0, warmup_steps=100, start_step=50)
    np.testing.assert_allclose(values(s, [0, 50, 75, 100, 150, 151, 10_000]), [0, 0, 0.5, 1.0, 2.0, 2.0, 2.0])


def test_cyclical_fu_values():
    s = vae.CyclicalBeta(beta=1.0, cycle_steps=100, ramp_fraction=0.5)
    np.testing.assert_allclose(values(s, [0, 25, 50, 99, 100, 125, 175]), [0, 0.5, 1, 1, 0, 0.5, 1], atol=1e-6)


def test_cyclical_optimus_values_and_end():
    s = vae.CyclicalBeta(beta=1.0, cycle_steps=100, ramp_fraction=0.25, zero_fraction=0.5, num_cycles=2)
    got = values(s, [0, 49, 50, 62.5, 75, 99, 100, 150, 162.5, 199, 200, 210])
    np.testing.assert_allclose(got, [0, 0, 0, 0.5, 1, 1, 0, 0, 0.5, 1, 1, 1], atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: vae.ConstantBeta(-1.0),
    lambda: vae.LinearWarmup(warmup_steps=0),
    lambda: vae.CyclicalBeta(cycle_steps=0),
    lambda: vae.CyclicalBeta(ramp_fraction=0.0),
    lambda: vae.CyclicalBeta(ramp_fraction=0.6, zero_fraction=0.5),
    lambda: vae.CyclicalBeta(num_cycles=0),
])
def test_bad_schedule_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_schedule_drives_beta_during_fit():
    # On every backend: JAX's fit computes the loss in a pure function, where the optimizer's
    # step counter is not visible; the model counts its own steps.
    model = small_vae(beta=vae.LinearWarmup(1.0, warmup_steps=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images(8), epochs=3, batch_size=4, verbose=0, validation_data=(images(4), None)).history
    # Epoch means of beta at steps (0, 1), (2, 3), (4, 5): 0.125, 0.625, 1.0.
    np.testing.assert_allclose(history["beta"], [0.125, 0.625, 1.0], atol=1e-6)
    assert int(ops.convert_to_numpy(model.step)) == 6  # evaluation (validation) steps do not count
    cyclical = small_vae(beta=vae.CyclicalBeta(1.0, cycle_steps=4, ramp_fraction=0.5))
    cyclical.compile(optimizer=keras.optimizers.Adam(1e-3))
    # Steps 0..3 give beta 0, 0.5, 1, 1; the next cycle starts again at 0.
    history = cyclical.fit(images(8), epochs=3, batch_size=4, verbose=0).history
    np.testing.assert_allclose(history["beta"], [0.25, 1.0, 0.25], atol=1e-6)


# --- the networks and the model ---------------------------------------------------------


def test_shapes():
    enc = vae.build_encoder((28, 28, 1), latent_dim=5, filters=(8, 16))
    dec = vae.build_decoder(5, (28, 28, 1), filters=(16, 8))
    z_mean, z_log_var = enc(np.zeros((2, 28, 28, 1), "float32"))
    assert z_mean.shape == z_log_var.shape == (2, 5)
    assert dec(np.zeros((3, 5), "float32")).shape == (3, 28, 28, 1)
    ae = vae.build_autoencoder((16, 16, 1), latent_dim=2, filters=(4, 8))
    assert ae(np.zeros((2, 16, 16, 1), "float32")).shape == (2, 16, 16, 1)
    # Every weight of the plain autoencoder gets a gradient: no unused variance head.
    assert not any("z_log_var" in w.path for w in ae.trainable_weights)


@pytest.mark.parametrize("latent_dim", [0, -1, 2.5])
def test_bad_latent_size(latent_dim):
    with pytest.raises(ValueError, match="latent_dim"):
        vae.build_encoder(IMAGE_SHAPE, latent_dim)
    with pytest.raises(ValueError, match="latent_dim"):
        vae.build_decoder(latent_dim, IMAGE_SHAPE)


def test_image_size_must_divide_by_strides():
    with pytest.raises(ValueError, match="divisible"):
        vae.build_encoder((28, 28, 1), 2, filters=(8, 16, 32))


def test_mismatched_parts_are_rejected():
    enc = vae.build_encoder((28, 28, 1), 4, filters=(4,))
    with pytest.raises(ValueError, match="images of shape"):
        vae.VAE(enc, vae.build_decoder(4, (32, 32, 1), filters=(4,)))
    with pytest.raises(ValueError, match="codes"):
        vae.VAE(enc, vae.build_decoder(3, (28, 28, 1), filters=(4,)))
    model = vae.VAE(enc, vae.build_decoder(4, (28, 28, 1), filters=(4,)))
    with pytest.raises(ValueError, match="expected images of shape"):
        model(np.zeros((2, 32, 32, 1), "float32"))
    with pytest.raises(ValueError, match="free_bits"):
        vae.VAE(enc, vae.build_decoder(4, (28, 28, 1), filters=(4,)), free_bits=-1.0)


def test_loss_is_the_negative_elbo_and_metrics_are_tracked():
    model = small_vae(beta=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = images(32)
    out = model(x)
    loss = float(ops.convert_to_numpy(model.compute_loss(x, y_pred=out)))
    rec = -decoder_log_prob(x, out["x_mean"], model.log_sigma()).mean()
    kl = ops.convert_to_numpy(vae.gaussian_kl(out["z_mean"], out["z_log_var"])).sum(-1).mean()
    assert loss == pytest.approx(rec + 0.5 * kl, rel=1e-5)
    assert [m.name for m in model.metrics] == ["loss", "reconstruction", "kl", "active_units", "beta"]


def test_free_bits_floor_the_penalty():
    # At initialisation codes are near the prior (KL per unit ~ 0): the penalty is d * free_bits.
    model = small_vae(latent_dim=3, free_bits=2.0, beta=1.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = images(16)
    out = model(x)
    rec = -decoder_log_prob(x, out["x_mean"], model.log_sigma()).mean()
    assert float(ops.convert_to_numpy(model.compute_loss(x, y_pred=out))) == pytest.approx(rec + 3 * 2.0, rel=1e-4)


def test_training_reduces_loss_and_bound_is_tighter_than_elbo():
    keras.utils.set_random_seed(0)
    model = small_vae()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = np.clip(images(64) * 0.2 + np.linspace(0, 0.8, 8)[None, :, None, None], 0, 1).astype("float32")
    history = model.fit(x, epochs=15, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    elbo = model.log_likelihood(x[:8], num_samples=1)
    bound = model.log_likelihood(x[:8], num_samples=64)
    assert elbo.shape == bound.shape == (8,)
    assert bound.mean() >= elbo.mean()


def test_save_load_round_trip(tmp_path):
    model = small_vae(beta=vae.CyclicalBeta(1.0, cycle_steps=10, zero_fraction=0.5, ramp_fraction=0.25),
                      free_bits=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = images(8)
    model.fit(x, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "vae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.beta_schedule, vae.CyclicalBeta)
    assert loaded.beta_schedule.get_config() == model.beta_schedule.get_config()
    assert loaded.free_bits == pytest.approx(0.1)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.reconstruct(x)),
                                  ops.convert_to_numpy(model.reconstruct(x)))
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.log_sigma()), ops.convert_to_numpy(model.log_sigma()))
    assert int(ops.convert_to_numpy(loaded.step)) == int(ops.convert_to_numpy(model.step)) == 2
    z = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.decode(z)), ops.convert_to_numpy(model.decode(z)))
    np.testing.assert_array_equal(loaded.generate(4, seed=1), model.generate(4, seed=1))


def test_encoder_decoder_and_sampling_round_trip(tmp_path):
    enc = vae.build_encoder(IMAGE_SHAPE, 3, filters=(4,), dense_units=8)
    dec = vae.build_decoder(3, IMAGE_SHAPE, filters=(4,), dense_units=8)
    x, z = images(4), np.ones((2, 3), "float32")
    for net, inp in ((enc, x), (dec, z)):
        net.save(tmp_path / f"{net.name}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{net.name}.keras")
        for a, b in zip(keras.tree.flatten(net(inp)), keras.tree.flatten(loaded(inp))):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    layer = vae.Sampling.from_config(vae.Sampling(seed=4, name="s").get_config())
    assert layer.seed == 4 and layer.name == "s"


def test_sampling_rejects_bad_inputs():
    with pytest.raises(ValueError, match="z_mean, z_log_var"):
        vae.Sampling()(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="share a shape"):
        vae.Sampling()([np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32")])


def test_generate_and_likelihood_arguments():
    model = small_vae()
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="n must"):
            model.generate(bad)
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood(images(2), num_samples=0)
    with pytest.raises(ValueError, match="expected images of shape"):
        model.log_likelihood(np.zeros((2, 4, 4, 1), "float32"))


def test_generate_returns_seeded_images_in_the_unit_interval():
    model = small_vae()
    a = model.generate(5, seed=0, batch_size=2)  # three batches, one latent stream
    assert isinstance(a, np.ndarray) and a.shape == (5, *IMAGE_SHAPE) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, model.generate(5, seed=0, batch_size=2))
    assert not np.array_equal(a, model.generate(5, seed=1, batch_size=2))
    # Without a seed, the model's own generator advances: two calls differ.
    assert not np.array_equal(model.generate(3), model.generate(3))
