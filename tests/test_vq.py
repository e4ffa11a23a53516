"""Tests of genlib.vq: the quantiser's math, EMA and restarts, usage statistics, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from genlib import vq


def _quantizer(codebook, **kwargs):
    codebook = np.asarray(codebook, dtype="float32")
    layer = vq.VectorQuantizer(len(codebook), codebook.shape[1], **kwargs)
    layer.build((None, codebook.shape[1]))
    layer.codebook.assign(codebook)
    return layer


def test_returns_nearest_codebook_rows_exactly():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(7, 3)).astype("float32")
    layer = _quantizer(codebook)
    z = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    z_q, idx = layer(z)
    z_q, idx = keras.ops.convert_to_numpy(z_q), keras.ops.convert_to_numpy(idx)
    brute = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
    assert idx.shape == (2, 4, 5) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_array_equal(z_q, codebook[brute])  # exactly the rows, not approximately


def test_straight_through_gradient_is_identity():
    rng = np.random.default_rng(1)
    layer = _quantizer(rng.normal(size=(5, 4)))
    z = tf.Variable(rng.normal(size=(3, 4)).astype("float32"))
    w = tf.constant(rng.normal(size=(3, 4)).astype("float32"))
    with tf.GradientTape() as tape:
        z_q, _ = layer(z)
        out = tf.reduce_sum(w * z_q)
    # d out / d z = w: the quantiser passes the decoder's gradient to the encoder unchanged.
    np.testing.assert_allclose(tape.gradient(out, z).numpy(), w.numpy(), rtol=1e-6)


def test_losses_train_one_side_each():
    rng = np.random.default_rng(2)
    layer = _quantizer(rng.normal(size=(4, 2)))
    z = tf.Variable(rng.normal(size=(6, 2)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        _, idx = layer(z)
        codebook_loss, commitment_loss = vq.vq_losses(z, layer.lookup(idx))
    assert tape.gradient(codebook_loss, z) is None or np.allclose(tape.gradient(codebook_loss, z).numpy(), 0)
    assert tape.gradient(commitment_loss, layer.codebook) is None
    np.testing.assert_allclose(float(codebook_loss), float(commitment_loss), rtol=1e-6)  # same value


def test_ema_moves_a_used_code_to_the_running_mean_of_its_vectors():
    decay = 0.5
    layer = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema=True, decay=decay)
    first = np.array([[1.0, 1.0], [1.5, 0.5], [0.5, 1.5], [1.0, 1.0]], "float32")  # mean (1, 1), 4 vectors
    layer(first, training=True)
    np.testing.assert_allclose(layer.codebook.numpy()[0], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(layer.codebook.numpy()[1], [10.0, 10.0])  # unused: unchanged
    second = np.array([[3.0, 3.0], [3.0, 3.0]], "float32")  # 2 vectors at (3, 3)
    layer(second, training=True)
    # Running sum over running count; after step 1 they hold (1 - decay) * 4 * (1, 1) and (1 - decay) * 4.
    count = decay * (1 - decay) * 4 + (1 - decay) * 2
    expected = (decay * (1 - decay) * 4 * 1.0 + (1 - decay) * 2 * 3.0) / count
    np.testing.assert_allclose(layer.codebook.numpy()[0], [expected, expected], rtol=1e-5)
    assert 1.0 < expected < 3.0
    layer(second, training=False)  # no update outside training
    np.testing.assert_allclose(layer.codebook.numpy()[0], [expected, expected], rtol=1e-5)


def test_dead_code_is_restarted_on_an_encoder_output():
    layer = _quantizer([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, 50.0]], restart_threshold=0.5, seed=3)
    layer.usage.assign([0.5, 0.5, 0.25, 0.0])  # code 3 is dead (below 0.5 / 4); code 2 is not yet
    z = np.random.default_rng(3).uniform(0, 1, size=(16, 2)).astype("float32")
    layer(z, training=True)
    book = layer.codebook.numpy()
    assert any(np.allclose(book[3], v) for v in z), book[3]
    np.testing.assert_array_equal(book[2], [50.0, 50.0])
    assert layer.usage.numpy()[3] == pytest.approx(0.25)  # a fresh uniform share after the restart


def test_no_restart_without_threshold():
    layer = _quantizer([[0.0, 0.0], [50.0, 50.0]])
    layer.usage.assign([1.0, 0.0])
    layer(np.zeros((4, 2), "float32"), training=True)
    np.testing.assert_array_equal(layer.codebook.numpy()[1], [50.0, 50.0])


def test_perplexity_and_codes_used():
    k = 8
    uniform = np.tile(np.arange(k), 5)
    assert float(vq.codebook_perplexity(uniform, k)) == pytest.approx(k, rel=1e-5)
    assert float(vq.codebook_perplexity(np.full(40, 3), k)) == pytest.approx(1.0, rel=1e-6)
    assert float(vq.codes_used(uniform, k)) == pytest.approx(1.0)
    assert float(vq.codes_used(np.array([[1, 1], [2, 1]]), k)) == pytest.approx(2 / k)
    two = np.array([0, 0, 0, 5])  # p = (3/4, 1/4): exp(entropy)
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert float(vq.codebook_perplexity(two, k)) == pytest.approx(np.exp(entropy), rel=1e-5)


def test_vqvae_trains_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, size=(32, 8, 8, 1)).astype("float32")
    model = vq.VQVAE((8, 8, 1), num_codes=8, code_dim=4, filters=(4, 8), ema=True, restart_threshold=0.1, seed=0)
    model.build()
    model.compile(optimizer="adam")
    history = model.fit(x, epochs=1, batch_size=16, verbose=0).history
    assert {"loss", "recon_mse", "perplexity", "codes_used"} <= set(history)
    out = model(x)
    assert out["reconstruction"].shape == (32, 8, 8, 1) and out["indices"].shape == (32, 2, 2)
    q = model.encode(x)
    assert q.shape == (32, 2, 2, 1) and q.dtype == np.int32
    path = tmp_path / "vqvae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.encode(x), q)
    np.testing.assert_allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-6)
    np.testing.assert_allclose(loaded.quantizer.ema_count.numpy(), model.quantizer.ema_count.numpy())


def test_quantizer_round_trip(tmp_path):
    inputs = keras.Input((3, 3, 4))
    z_q, idx = vq.VectorQuantizer(6, 4, ema=True, restart_threshold=0.2, seed=1)(inputs)
    model = keras.Model(inputs, [z_q, idx])
    x = np.random.default_rng(5).normal(size=(2, 3, 3, 4)).astype("float32")
    path = tmp_path / "q.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_codes": 1, "code_dim": 4}, "num_codes"),
    ({"num_codes": 8, "code_dim": 0}, "code_dim"),
    ({"num_codes": 8, "code_dim": 4, "decay": 1.0}, "decay"),
    ({"num_codes": 8, "code_dim": 4, "restart_threshold": -1}, "restart_threshold"),
])
def test_quantizer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vq.VectorQuantizer(**kwargs)


def test_bad_shapes():
    layer = vq.VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        layer(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="divisible"):
        vq.VQVAE((28, 28, 1), filters=(8, 8, 8))
    with pytest.raises(ValueError, match="image_shape"):
        vq.VQVAE((28, 28, 3))
    with pytest.raises(ValueError, match="beta"):
        vq.VQVAE(beta=-1.0)
    model = vq.VQVAE((8, 8, 1), num_codes=4, code_dim=2, filters=(4,))
    model.build()
    with pytest.raises(ValueError, match="expected images"):
        model(np.zeros((1, 9, 9, 1), "float32"))
    with pytest.raises(ValueError, match="expected indices"):
        model.decode(np.full((1, 4, 4), 7))
