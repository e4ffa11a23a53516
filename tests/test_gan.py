"""Tests of genlib.gan: the gradient penalty's exact values, interpolates, feature quantisation, training, saving.

Backend-neutral: run under TensorFlow, JAX and PyTorch.
"""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util, gan, vq


def _np(x):
    return ops.convert_to_numpy(x)


def _linear_critic(weights):
    """A critic D(x) = <w, x> + 3 on 4×4×1 images: its gradient is w everywhere."""
    x = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.0), bias_initializer="ones")
    model = keras.Model(x, dense(keras.layers.Flatten()(x)))
    dense.kernel.assign(np.asarray(weights, "float32").reshape(16, 1))
    dense.bias.assign([3.0])
    return model


def _batches(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4, 4, 1)).astype("float32"), rng.normal(size=(n, 4, 4, 1)).astype("float32"))


def test_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    w = np.random.default_rng(1).normal(size=16)
    critic = _linear_critic(w / np.linalg.norm(w))  # ||grad|| = ||w|| = 1 at every point
    real, fake = _batches()
    assert float(_np(gan.gradient_penalty(critic, real, fake, seed=0))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [0.25, 3.0])
def test_penalty_of_a_scaled_linear_critic_is_known(scale):
    w = np.random.default_rng(2).normal(size=16)
    critic = _linear_critic(scale * w / np.linalg.norm(w))
    real, fake = _batches()
    # The gradient norm is `scale` at every interpolate, so the penalty is (scale - 1)^2 whatever alpha is.
    assert float(_np(gan.gradient_penalty(critic, real, fake, seed=0))) == pytest.approx((scale - 1.0) ** 2, rel=1e-5)


def test_penalty_trains_through_to_the_critic_weights():
    # GP of a linear critic is (||w|| - 1)^2, so its gradient w.r.t. w is 2 (||w|| - 1) w / ||w||.
    w = 2.0 * np.random.default_rng(5).normal(size=16)
    critic = _linear_critic(w)
    real, fake = _batches()
    kernel = critic.layers[-1].kernel
    gp, _, (grad,) = _util.value_and_grad(lambda: gan.gradient_penalty(critic, real, fake, seed=0), [kernel])
    norm = np.linalg.norm(w)
    assert float(_np(gp)) == pytest.approx((norm - 1.0) ** 2, rel=1e-5)
    np.testing.assert_allclose(_np(grad).ravel(), 2 * (norm - 1) * w / norm, rtol=1e-4, atol=1e-6)


def test_penalty_of_a_quadratic_critic_matches_its_gradient_at_the_given_alpha():
    x = keras.Input((4, 4, 1))
    critic = keras.Model(x, ops.sum(x**2, axis=(1, 2, 3))[:, None])  # grad = 2 x_hat
    real, fake = _batches()
    alpha = np.linspace(0.0, 1.0, 8).astype("float32")
    x_hat = real + alpha[:, None, None, None] * (fake - real)
    expected = np.mean((np.linalg.norm(2 * x_hat.reshape(8, -1), axis=1) - 1.0) ** 2)
    assert float(_np(gan.gradient_penalty(critic, real, fake, alpha=alpha))) == pytest.approx(expected, rel=1e-4)


def test_interpolates_lie_on_the_segment_between_real_and_fake():
    real, fake = _batches(3)
    alpha = _np(keras.random.uniform((8,), seed=0))
    x_hat = _np(gan.interpolates(real, fake, alpha))
    d_real = np.linalg.norm((x_hat - real).reshape(8, -1), axis=1)
    d_fake = np.linalg.norm((x_hat - fake).reshape(8, -1), axis=1)
    span = np.linalg.norm((fake - real).reshape(8, -1), axis=1)
    np.testing.assert_allclose(d_real + d_fake, span, rtol=1e-5)  # on the segment (triangle equality)
    np.testing.assert_allclose(d_real / span, alpha, rtol=1e-4)  # one alpha per example
    # alpha = 0 and 1 give the ends
    np.testing.assert_allclose(_np(gan.interpolates(real, fake, np.zeros(8))), real)
    np.testing.assert_allclose(_np(gan.interpolates(real, fake, np.ones(8))), fake, atol=1e-6)


def test_penalty_alphas_are_uniform_in_0_1(monkeypatch):
    seen = []
    original = gan.interpolates

    def spy(real, fake, alpha):
        seen.append(_np(alpha))
        return original(real, fake, alpha)

    monkeypatch.setattr(gan, "interpolates", spy)
    real, fake = np.zeros((4000, 4, 4, 1), "float32"), np.ones((4000, 4, 4, 1), "float32")
    gan.gradient_penalty(_linear_critic(np.ones(16)), real, fake, seed=0)
    a = seen[0]
    assert a.shape == (4000,) and a.min() >= 0.0 and a.max() <= 1.0
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.var() - 1 / 12) < 0.01  # U(0,1): mean 1/2, variance 1/12
    assert np.histogram(a, bins=4, range=(0, 1))[0].min() > 900  # flat, not bell-shaped


def test_losses_have_their_closed_forms():
    r, f = np.array([[2.0], [-1.0]], "float32"), np.array([[0.5], [-3.0]], "float32")
    sig = lambda t: 1 / (1 + np.exp(-t))
    expected = np.mean(-0.9 * np.log(sig(r)) - 0.1 * np.log(1 - sig(r))) + np.mean(-np.log(1 - sig(f)))
    assert float(gan.discriminator_loss(ops.convert_to_tensor(r), ops.convert_to_tensor(f), label_smoothing=0.1)) \
        == pytest.approx(expected, rel=1e-5)
    assert float(gan.generator_loss(ops.convert_to_tensor(f))) == pytest.approx(np.mean(-np.log(sig(f))), rel=1e-5)


# ---------------------------------------------------------------------------
# Feature quantisation: the VectorQuantizer of genlib.vq inside D


def _fq_discriminator(**options):
    return gan.build_discriminator((8, 8, 1), filters=4, feature_quantization={"num_codes": 4, "seed": 0, **options})


def test_fq_is_the_vector_quantizer_with_fq_gan_defaults():
    layer = _fq_discriminator().get_layer("fq")
    assert type(layer) is vq.VectorQuantizer
    assert (layer.num_codes, layer.code_dim, layer.ema, layer.decay, layer.init_from_data) == (4, 8, True, 0.9, True)
    assert _fq_discriminator(decay=0.5, num_codes=6).get_layer("fq").decay == 0.5


def test_fq_forward_returns_dictionary_entries():
    d = _fq_discriminator()
    fq = d.get_layer("fq")
    features = keras.Model(d.input, [fq.input, fq.output[0]])
    h, q = map(_np, features(np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")))
    book = _np(fq.codebook)
    nearest = np.argmin(((h.reshape(-1, 1, 8) - book[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(q.reshape(-1, 8), book[nearest])


def test_commitment_loss_is_beta_times_the_squared_distance():
    g = gan.build_generator(8, (8, 8, 1), filters=4)
    d = _fq_discriminator()
    model = gan.GAN(g, d, commitment_weight=0.5, seed=0)
    x = np.random.default_rng(1).normal(size=(6, 8, 8, 1)).astype("float32")
    logits, commitment = model.discriminate(x)
    fq = d.get_layer("fq")
    h, q = map(_np, keras.Model(d.input, [fq.input, fq.output[0]])(x))
    assert float(_np(commitment)) == pytest.approx(0.5 * np.mean((h - q) ** 2), rel=1e-5)
    np.testing.assert_allclose(_np(logits), _np(d(x)), atol=1e-6)
    assert gan.GAN(g, gan.build_discriminator((8, 8, 1), filters=4)).discriminate(x)[1] == 0.0  # no FQ, no loss


def test_fq_dictionary_moves_in_training_only():
    d = _fq_discriminator()
    fq = d.get_layer("fq")
    x = np.random.default_rng(3).normal(size=(8, 8, 8, 1)).astype("float32")
    before = _np(fq.codebook).copy()
    d(x, training=False)  # outside training nothing moves
    np.testing.assert_array_equal(_np(fq.codebook), before)
    d(x, training=True)  # the first training call draws the dictionary from the features (see test_vq)
    assert not np.allclose(_np(fq.codebook), before) and float(_np(fq.initialized)) == 1.0


# ---------------------------------------------------------------------------
# Training and saving


def _tiny(kind, num_classes=0):
    g = gan.build_generator(8, (8, 8, 1), filters=4, num_classes=num_classes)
    d = gan.build_discriminator((8, 8, 1), filters=4, num_classes=num_classes,
                                feature_quantization={"num_codes": 4} if kind.endswith("fq") else None,
                                conditioning="projection" if num_classes else "channels")
    if kind.startswith("wgan"):
        return gan.WGANGP(g, d, n_critic=2, num_classes=num_classes, seed=0)
    return gan.GAN(g, d, num_classes=num_classes, label_smoothing=0.1, label_flip=0.05, seed=0)


def _weights(variables):
    return [_np(v).copy() for v in variables]


def _moved(before, variables):
    return any(not np.allclose(a, _np(b)) for a, b in zip(before, variables))


@pytest.mark.parametrize("kind,num_classes", [("gan", 0), ("gan-fq", 0), ("wgan", 0), ("gan", 10), ("wgan-fq", 3)])
def test_training_step_updates_both_nets_and_saves(kind, num_classes, tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny(kind, num_classes)
    model.compile()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % max(num_classes, 1)
    g0, d0 = _weights(model.generator.trainable_variables), _weights(model.discriminator.trainable_variables)
    g_stats = _weights(model.generator.non_trainable_variables)  # batch-norm moving averages
    history = model.fit(x, y if num_classes else None, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == set(model.metric_names) and all(np.isfinite(v[-1]) for v in history.values())
    assert _moved(g0, model.generator.trainable_variables) and _moved(d0, model.discriminator.trainable_variables)
    assert _moved(g_stats, model.generator.non_trainable_variables)
    steps = 2 * (model.n_critic if kind.startswith("wgan") else 1)
    assert int(_np(model.d_optimizer.iterations)) == steps and int(_np(model.g_optimizer.iterations)) == 2
    if kind.endswith("fq"):
        assert float(_np(model.discriminator.get_layer("fq").initialized)) == 1.0
    path = tmp_path / "gan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    z = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    inputs = [z, np.arange(4, dtype="int32") % max(num_classes, 1)] if num_classes else z
    np.testing.assert_allclose(_np(loaded(inputs)), _np(model(inputs)), atol=1e-6)
    d_in = [x[:4], inputs[1]] if num_classes else x[:4]
    np.testing.assert_allclose(_np(loaded.discriminator(d_in)), _np(model.discriminator(d_in)), atol=1e-5)
    assert loaded.get_config()["num_classes"] == num_classes


def test_a_wgan_gp_step_trains_the_critic_through_the_penalty():
    # With gp_weight alone the critic's loss is its penalty: a critic step must lower it.
    keras.utils.set_random_seed(0)
    g = gan.build_generator(8, (8, 8, 1), filters=4)
    model = gan.WGANGP(g, gan.build_discriminator((8, 8, 1), filters=4), n_critic=1, gp_weight=1e4, seed=0)
    model.compile(keras.optimizers.SGD(1e-5), keras.optimizers.SGD(0.0))
    real = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    fake = model.generate(64, seed=0)
    before = float(_np(gan.gradient_penalty(model.discriminator, real, fake, seed=1)))
    model.fit(real, batch_size=64, epochs=3, verbose=0)
    after = float(_np(gan.gradient_penalty(model.discriminator, real, fake, seed=1)))
    assert after < before


def test_generate_is_seeded_and_in_range():
    model = _tiny("gan", 10)
    a = model.generate(5, labels=np.arange(5), seed=3)
    assert isinstance(a, np.ndarray) and a.shape == (5, 8, 8, 1) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, model.generate(5, labels=np.arange(5), seed=3))
    np.testing.assert_allclose(a, model.generate(5, labels=np.arange(5), seed=3, batch_size=2), atol=1e-6)
    assert not np.array_equal(a, model.generate(5, labels=np.arange(5), seed=4))
    b = _tiny("gan").generate(7, seed=0, batch_size=3, progress=False)
    assert b.shape == (7, 8, 8, 1) and np.abs(b).max() <= 1


def test_mlp_builders_shapes():
    g, d = gan.build_mlp_generator(3, 2, units=8), gan.build_mlp_discriminator(2, units=8)
    assert g(np.zeros((5, 3))).shape == (5, 2) and d(np.zeros((5, 2))).shape == (5, 1)


@pytest.mark.parametrize("call,match", [
    (lambda: gan.build_generator(image_shape=(30, 30, 1)), "divisible by 4"),
    (lambda: gan.build_generator(latent_dim=0), "latent_dim"),
    (lambda: gan.build_generator(latent_dim=True), "latent_dim"),
    (lambda: gan.build_discriminator(dropout=1.5), "dropout"),
    (lambda: gan.build_discriminator(num_classes=3, conditioning="film"), "conditioning"),
    (lambda: gan.build_discriminator(feature_quantization=32), "feature_quantization"),
    (lambda: gan.build_discriminator(feature_quantization={"num_codes": 1}), "num_codes"),
    (lambda: gan.build_discriminator(feature_quantization={"decay": 1.0}), "decay"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4), num_classes=10),
     "two inputs"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), "D"), "keras Models"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4),
                     label_smoothing=0.7), "label_smoothing"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4),
                     commitment_weight=-1), "commitment_weight"),
    (lambda: gan.WGANGP(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4), n_critic=0),
     "n_critic"),
    (lambda: gan.WGANGP(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4),
                        gp_weight=-1.0), "gp_weight"),
    (lambda: gan.gradient_penalty(_linear_critic(np.ones(16)), np.zeros((2, 4, 4, 1)), np.zeros((3, 4, 4, 1))),
     "same shape"),
    (lambda: _tiny("gan", 10).generate(3), "labels"),
    (lambda: _tiny("gan", 10).generate(3, labels=[0, 1]), "labels"),
    (lambda: _tiny("gan").generate(0), "n"),
])
def test_bad_arguments_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wgan_rejects_a_batch_not_divisible_by_n_critic():
    model = _tiny("wgan")
    model.compile()
    x = np.zeros((9, 8, 8, 1), "float32")
    with pytest.raises(ValueError, match="multiple of n_critic"):
        model.fit(x, batch_size=9, epochs=1, verbose=0)
