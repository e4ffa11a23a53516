"""Tests of genlib.gan: the gradient penalty's exact values, interpolates, feature quantisation, training, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from genlib import gan


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
    return (tf.constant(rng.normal(size=(n, 4, 4, 1)).astype("float32")),
            tf.constant(rng.normal(size=(n, 4, 4, 1)).astype("float32")))


def test_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    w = np.random.default_rng(1).normal(size=16)
    critic = _linear_critic(w / np.linalg.norm(w))  # ||grad|| = ||w|| = 1 at every point
    real, fake = _batches()
    assert float(gan.gradient_penalty(critic, real, fake, seed=0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [0.25, 3.0])
def test_penalty_of_a_scaled_linear_critic_is_known(scale):
    w = np.random.default_rng(2).normal(size=16)
    critic = _linear_critic(scale * w / np.linalg.norm(w))
    real, fake = _batches()
    # The gradient norm is `scale` at every interpolate, so the penalty is (scale - 1)^2 whatever alpha is.
    assert float(gan.gradient_penalty(critic, real, fake, seed=0)) == pytest.approx((scale - 1.0) ** 2, rel=1e-5)


def test_penalty_of_a_quadratic_critic_matches_its_gradient_at_the_given_alpha():
    x = keras.Input((4, 4, 1))
    critic = keras.Model(x, keras.ops.sum(x**2, axis=(1, 2, 3))[:, None])  # grad = 2 x_hat
    real, fake = _batches()
    alpha = np.linspace(0.0, 1.0, 8).astype("float32")
    x_hat = real.numpy() + alpha[:, None, None, None] * (fake.numpy() - real.numpy())
    expected = np.mean((np.linalg.norm(2 * x_hat.reshape(8, -1), axis=1) - 1.0) ** 2)
    assert float(gan.gradient_penalty(critic, real, fake, alpha=alpha)) == pytest.approx(expected, rel=1e-4)


def test_interpolates_lie_on_the_segment_between_real_and_fake():
    real, fake = _batches(3)
    alpha = keras.random.uniform((8,), seed=0)
    x_hat = gan.interpolates(real, fake, alpha).numpy()
    d_real = np.linalg.norm((x_hat - real.numpy()).reshape(8, -1), axis=1)
    d_fake = np.linalg.norm((x_hat - fake.numpy()).reshape(8, -1), axis=1)
    span = np.linalg.norm((fake.numpy() - real.numpy()).reshape(8, -1), axis=1)
    np.testing.assert_allclose(d_real + d_fake, span, rtol=1e-5)  # on the segment (triangle equality)
    np.testing.assert_allclose(d_real / span, alpha.numpy(), rtol=1e-4)  # one alpha per example
    # alpha = 0 and 1 give the ends
    np.testing.assert_allclose(gan.interpolates(real, fake, np.zeros(8)).numpy(), real.numpy())
    np.testing.assert_allclose(gan.interpolates(real, fake, np.ones(8)).numpy(), fake.numpy(), atol=1e-6)


def test_penalty_alphas_are_uniform_in_0_1(monkeypatch):
    seen = []
    original = gan.interpolates

    def spy(real, fake, alpha):
        seen.append(keras.ops.convert_to_numpy(alpha))
        return original(real, fake, alpha)

    monkeypatch.setattr(gan, "interpolates", spy)
    real, fake = tf.zeros((4000, 4, 4, 1)), tf.ones((4000, 4, 4, 1))
    gan.gradient_penalty(_linear_critic(np.ones(16)), real, fake, seed=0)
    a = seen[0]
    assert a.shape == (4000,) and a.min() >= 0.0 and a.max() <= 1.0
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.var() - 1 / 12) < 0.01  # U(0,1): mean 1/2, variance 1/12
    assert np.histogram(a, bins=4, range=(0, 1))[0].min() > 900  # flat, not bell-shaped


def test_losses_have_their_closed_forms():
    r, f = tf.constant([[2.0], [-1.0]]), tf.constant([[0.5], [-3.0]])
    sig = lambda t: 1 / (1 + np.exp(-t))
    expected = np.mean(-0.9 * np.log(sig(r.numpy())) - 0.1 * np.log(1 - sig(r.numpy()))) + \
        np.mean(-np.log(1 - sig(f.numpy())))
    assert float(gan.discriminator_loss(r, f, label_smoothing=0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(gan.generator_loss(f)) == pytest.approx(np.mean(-np.log(sig(f.numpy()))), rel=1e-5)


# ---------------------------------------------------------------------------
# Feature quantisation


def _fq(**kwargs):
    layer = gan.FeatureQuantization(num_embeddings=8, seed=0, **kwargs)
    layer.build((None, 3))
    return layer


def test_fq_forward_returns_dictionary_entries_and_gradients_pass_straight_through():
    layer = _fq(commitment_weight=0.0)
    x = tf.Variable(np.random.default_rng(0).normal(size=(5, 2, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        q = layer(x, training=False)
        loss = tf.reduce_sum(q * tf.constant(np.arange(30, dtype="float32").reshape(5, 2, 3)))
    entries = layer.embeddings.numpy()
    for v in q.numpy().reshape(-1, 3):
        assert np.min(np.abs(entries - v).max(axis=1)) < 1e-6  # each output is a dictionary row
    codes = layer.codes(x).numpy().reshape(-1)
    nearest = np.argmin(((x.numpy().reshape(-1, 1, 3) - entries[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(codes, nearest)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), np.arange(30).reshape(5, 2, 3))  # identity


def test_fq_commitment_loss_is_beta_times_the_squared_distance():
    layer = _fq(commitment_weight=0.5)
    x = tf.constant(np.random.default_rng(1).normal(size=(6, 3)).astype("float32"))
    q = layer(x).numpy()
    assert float(layer.losses[-1]) == pytest.approx(0.5 * np.mean((x.numpy() - q) ** 2), rel=1e-5)


def test_fq_first_training_call_takes_entries_from_the_features():
    layer = _fq()
    x = np.random.default_rng(3).normal(loc=4.0, size=(50, 3)).astype("float32")
    layer(x, training=True)
    entries = layer.embeddings.numpy()
    # each entry is a feature vector of the batch, moved at most by its own moving-average step
    assert np.all(np.min(np.linalg.norm(entries[:, None] - x[None], axis=-1), axis=1) < 2.0)
    assert np.linalg.norm(entries.mean(0) - x.mean(0)) < 1.0
    before = entries.copy()
    layer(x, training=True)  # later calls only average; they do not draw again
    assert np.linalg.norm(layer.embeddings.numpy() - before) < np.linalg.norm(before - x.mean(0)) * 0.5 + 1e-3


def test_fq_dictionary_moves_toward_the_features_mean():
    layer = _fq(decay=0.9, init_from_data=False)
    old = layer.embeddings.numpy().copy()
    x = np.random.default_rng(2).normal(loc=5.0, scale=0.01, size=(10, 3)).astype("float32")
    k = int(np.argmin(((old - x.mean(0)) ** 2).sum(1)))  # every feature lands on this entry
    for step in range(1, 4):
        before = layer.embeddings.numpy().copy()
        layer(x, training=True)
        after = layer.embeddings.numpy()
        # count starts at 1: after t steps the entry is (d e0 + (1 - d) 10 m) / (d + (1 - d) 10), d = 0.9^t
        d = 0.9**step
        expected = (d * old[k] + (1 - d) * 10 * x.mean(0)) / (d + (1 - d) * 10)
        np.testing.assert_allclose(after[k], expected, rtol=1e-4)
        assert np.linalg.norm(after[k] - x.mean(0)) < np.linalg.norm(before[k] - x.mean(0))
        np.testing.assert_allclose(np.delete(after, k, 0), np.delete(old, k, 0))  # unused entries stay put


def test_fq_does_not_update_outside_training():
    layer = _fq()
    old = layer.embeddings.numpy().copy()
    layer(tf.ones((4, 3)) * 7.0, training=False)
    np.testing.assert_array_equal(layer.embeddings.numpy(), old)


# ---------------------------------------------------------------------------
# Training and saving


def _tiny(kind, num_classes=0):
    g = gan.build_generator(8, (8, 8, 1), filters=4, num_classes=num_classes)
    d = gan.build_discriminator((8, 8, 1), filters=4, num_classes=num_classes,
                                feature_quantization={"num_embeddings": 4} if kind == "fq" else None,
                                conditioning="projection" if num_classes else "channels")
    if kind == "wgan":
        return gan.WGANGP(g, d, n_critic=2, num_classes=num_classes, seed=0)
    return gan.GAN(g, d, num_classes=num_classes, label_smoothing=0.1, label_flip=0.05, seed=0)


@pytest.mark.parametrize("kind,num_classes", [("gan", 0), ("fq", 0), ("wgan", 0), ("gan", 10), ("wgan", 3)])
def test_train_step_updates_both_nets_and_saves(kind, num_classes, tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny(kind, num_classes)
    model.compile()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % max(num_classes, 1)
    g0 = [w.numpy().copy() for w in model.generator.trainable_weights]
    d0 = [w.numpy().copy() for w in model.discriminator.trainable_weights]
    history = model.fit(x, y if num_classes else None, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == set(model.metric_names) and all(np.isfinite(v[-1]) for v in history.values())
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(g0, model.generator.trainable_weights))
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(d0, model.discriminator.trainable_weights))
    path = tmp_path / "gan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    z = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    inputs = [z, np.arange(4, dtype="int32") % max(num_classes, 1)] if num_classes else z
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), atol=1e-6)
    images = inputs[0] if num_classes else x[:4]
    d_in = [x[:4], inputs[1]] if num_classes else images
    np.testing.assert_allclose(loaded.discriminator(d_in).numpy(), model.discriminator(d_in).numpy(), atol=1e-5)
    assert loaded.get_config()["num_classes"] == num_classes


def test_generate_is_seeded_and_in_range():
    model = _tiny("gan", 10)
    a = model.generate(5, labels=np.arange(5), seed=3)
    assert a.shape == (5, 8, 8, 1) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, model.generate(5, labels=np.arange(5), seed=3))


def test_fq_layer_round_trips(tmp_path):
    x = keras.Input((3,))
    model = keras.Model(x, gan.FeatureQuantization(5, decay=0.8, commitment_weight=0.1, seed=1)(x))
    model.layers[-1](tf.ones((2, 3)), training=True)  # move the dictionary, so the saved state matters
    model.save(tmp_path / "fq.keras")
    loaded = keras.saving.load_model(tmp_path / "fq.keras")
    v = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(v).numpy(), model(v).numpy())
    assert loaded.layers[-1].get_config()["decay"] == 0.8


def test_mlp_builders_shapes():
    g, d = gan.build_mlp_generator(3, 2, units=8), gan.build_mlp_discriminator(2, units=8)
    assert g(np.zeros((5, 3))).shape == (5, 2) and d(np.zeros((5, 2))).shape == (5, 1)


@pytest.mark.parametrize("call,match", [
    (lambda: gan.build_generator(image_shape=(30, 30, 1)), "divisible by 4"),
    (lambda: gan.build_generator(latent_dim=0), "latent_dim"),
    (lambda: gan.build_discriminator(dropout=1.5), "dropout"),
    (lambda: gan.build_discriminator(num_classes=3, conditioning="film"), "conditioning"),
    (lambda: gan.build_discriminator(feature_quantization=32), "feature_quantization"),
    (lambda: gan.FeatureQuantization(num_embeddings=1), "num_embeddings"),
    (lambda: gan.FeatureQuantization(decay=1.0), "decay"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4), num_classes=10),
     "two inputs"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), "D"), "keras Models"),
    (lambda: gan.GAN(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4),
                     label_smoothing=0.7), "label_smoothing"),
    (lambda: gan.WGANGP(gan.build_generator(8, (8, 8, 1), 4), gan.build_discriminator((8, 8, 1), 4), n_critic=0),
     "n_critic"),
    (lambda: gan.gradient_penalty(_linear_critic(np.ones(16)), tf.zeros((2, 4, 4, 1)), tf.zeros((3, 4, 4, 1))),
     "same shape"),
    (lambda: _tiny("gan", 10).generate(3), "labels"),
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
