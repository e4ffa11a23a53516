"""Tests of genlib.vq: the quantiser's math, EMA and restarts, usage statistics, serialisation, two-stage generation.

Backend-neutral: run under TensorFlow, JAX and PyTorch.
"""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util, vq


def _np(x):
    return ops.convert_to_numpy(x)


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
    z_q, idx = map(_np, layer(z))
    brute = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
    assert idx.shape == (2, 4, 5) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_array_equal(z_q, codebook[brute])  # exactly the rows, not approximately


def test_straight_through_gradient_is_identity():
    rng = np.random.default_rng(1)
    layer = _quantizer(rng.normal(size=(5, 4)))
    z = rng.normal(size=(3, 4)).astype("float32")
    w = rng.normal(size=(3, 4)).astype("float32")
    # d sum(w * z_q) / dz = w: the quantiser passes the decoder's gradient to the encoder unchanged.
    grad = _util.input_gradient(lambda v: ops.multiply(w, layer(v)[0]), z)
    np.testing.assert_allclose(_np(grad), w, rtol=1e-6)


def test_losses_train_one_side_each():
    rng = np.random.default_rng(2)
    layer = _quantizer(rng.normal(size=(4, 2)))
    z = keras.Variable(rng.normal(size=(6, 2)).astype("float32"))

    def grads(which):
        def loss():
            _, idx, codes = layer(z.value, return_codes=True)
            return vq.vq_losses(z.value, codes)[which]
        value, _, (dz, dbook) = _util.value_and_grad(loss, [z, layer.codebook])
        zero_if_none = lambda g: np.zeros(2) if g is None else _np(g)  # TensorFlow: None where no path
        return float(_np(value)), zero_if_none(dz), zero_if_none(dbook)

    codebook_value, dz, dbook = grads(0)
    assert np.allclose(dz, 0) and not np.allclose(dbook, 0)  # the codebook term moves only the codes
    commitment_value, dz, dbook = grads(1)
    assert not np.allclose(dz, 0) and np.allclose(dbook, 0)  # the commitment term moves only the encoder
    assert codebook_value == pytest.approx(commitment_value, rel=1e-6)  # same value


def test_ema_moves_a_used_code_to_the_running_mean_of_its_vectors():
    decay = 0.5
    layer = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema=True, decay=decay)
    first = np.array([[1.0, 1.0], [1.5, 0.5], [0.5, 1.5], [1.0, 1.0]], "float32")  # mean (1, 1), 4 vectors
    layer(first, training=True)
    np.testing.assert_allclose(_np(layer.codebook)[0], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(_np(layer.codebook)[1], [10.0, 10.0])  # unused: unchanged
    second = np.array([[3.0, 3.0], [3.0, 3.0]], "float32")  # 2 vectors at (3, 3)
    layer(second, training=True)
    # Running sum over running count; after step 1 they hold (1 - decay) * 4 * (1, 1) and (1 - decay) * 4.
    count = decay * (1 - decay) * 4 + (1 - decay) * 2
    expected = (decay * (1 - decay) * 4 * 1.0 + (1 - decay) * 2 * 3.0) / count
    np.testing.assert_allclose(_np(layer.codebook)[0], [expected, expected], rtol=1e-5)
    assert 1.0 < expected < 3.0
    layer(second, training=False)  # no update outside training
    np.testing.assert_allclose(_np(layer.codebook)[0], [expected, expected], rtol=1e-5)


def test_update_codebook_is_the_training_update():
    layer = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema=True, decay=0.0)
    flat = np.array([[1.0, 3.0], [3.0, 1.0]], "float32")
    layer.update_codebook(flat, np.array([0, 0], "int32"))  # decay 0: code 0 is the mean of its vectors
    np.testing.assert_allclose(_np(layer.codebook), [[2.0, 2.0], [10.0, 10.0]])


def test_dead_code_is_restarted_on_an_encoder_output():
    layer = _quantizer([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, 50.0]], restart_threshold=0.5, seed=3)
    layer.usage.assign([0.5, 0.5, 0.25, 0.0])  # code 3 is dead (below 0.5 / 4); code 2 is not yet
    z = np.random.default_rng(3).uniform(0, 1, size=(16, 2)).astype("float32")
    layer(z, training=True)
    book = _np(layer.codebook)
    assert any(np.allclose(book[3], v) for v in z), book[3]
    np.testing.assert_array_equal(book[2], [50.0, 50.0])
    assert _np(layer.usage)[3] == pytest.approx(0.25)  # a fresh uniform share after the restart


def test_output_uses_the_codebook_that_chose_the_indices():
    # Issue 26: the indices were chosen with the old codebook but z_q was looked up after the
    # update, so a vector assigned to a just-restarted code got that code's random new value.
    book = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0]], "float32")
    layer = _quantizer(book, ema=True, decay=0.5, restart_threshold=0.9, seed=0)
    layer.usage.assign([1.0, 0.0, 0.0])  # codes 1 and 2 are dead and will be restarted this step
    z = np.array([[0.9, 1.1], [0.1, -0.1], [-1.2, 0.8], [0.0, 0.2]], "float32")
    z_q, idx = map(_np, layer(z, training=True))
    np.testing.assert_array_equal(idx, [1, 0, 2, 0])
    np.testing.assert_array_equal(z_q, book[idx])  # the rows that were nearest, not their updates
    assert not np.allclose(_np(layer.codebook), book)  # the update did happen, after the lookup
    # The codes for the losses (return_codes) are the same rows, differentiable w.r.t. the codebook.
    twin = _quantizer(book, ema=True, decay=0.5, restart_threshold=0.9, seed=0)
    twin.usage.assign([1.0, 0.0, 0.0])
    _, _, codes = twin(z, training=True, return_codes=True)
    np.testing.assert_array_equal(_np(codes), book[idx])


def test_init_from_data_draws_the_codebook_from_the_first_training_batch():
    layer = vq.VectorQuantizer(4, 3, ema=True, decay=0.9, init_from_data=True, seed=0)
    layer.build((None, 3))
    x = np.random.default_rng(3).normal(loc=4.0, size=(50, 3)).astype("float32")
    z_q, idx = map(_np, layer(x, training=True))
    # The batch was quantised with drawn entries: every output is one of the batch's vectors.
    assert all(np.min(np.abs(x - v).max(axis=1)) < 1e-6 for v in z_q)
    # ...and then each used entry moved to the mean of its vectors (an EMA from a zero count).
    book = _np(layer.codebook)
    for k in np.unique(idx):
        np.testing.assert_allclose(book[k], x[idx == k].mean(0), rtol=1e-5)
    z_q, _ = layer(x + 100.0, training=True)  # later calls do not draw again: they quantise with the entries
    assert all(np.min(np.abs(book - v).max(axis=1)) < 1e-6 for v in _np(z_q))


def test_no_restart_without_threshold():
    layer = _quantizer([[0.0, 0.0], [50.0, 50.0]])
    layer.usage.assign([1.0, 0.0])
    layer(np.zeros((4, 2), "float32"), training=True)
    np.testing.assert_array_equal(_np(layer.codebook)[1], [50.0, 50.0])


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


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_trains_and_round_trips(ema, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, size=(32, 8, 8, 1)).astype("float32")
    model = vq.VQVAE((8, 8, 1), num_codes=8, code_dim=4, filters=(4, 8), ema=ema,
                     restart_threshold=0.1 if ema else 0.0, seed=0)
    model.build()
    model.compile(optimizer="adam")
    book = _np(model.quantizer.codebook).copy()
    encoder = [_np(w).copy() for w in model.encoder.trainable_variables]
    history = model.fit(x, epochs=2, batch_size=16, verbose=0).history
    assert {"loss", "recon_mse", "codebook_loss", "commitment_loss", "perplexity", "codes_used"} <= set(history)
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert not np.allclose(_np(model.quantizer.codebook), book)  # by EMA or by the codebook loss
    assert any(not np.allclose(a, _np(b)) for a, b in zip(encoder, model.encoder.trainable_variables))
    out = model(x)
    assert out["reconstruction"].shape == (32, 8, 8, 1) and out["indices"].shape == (32, 2, 2)
    q = model.encode(x)
    assert q.shape == (32, 2, 2, 1) and q.dtype == np.int32
    path = tmp_path / "vqvae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.encode(x), q)
    np.testing.assert_allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-6)
    np.testing.assert_allclose(_np(loaded.quantizer.ema_count), _np(model.quantizer.ema_count))


def test_quantizer_round_trip(tmp_path):
    inputs = keras.Input((3, 3, 4))
    z_q, idx = vq.VectorQuantizer(6, 4, ema=True, restart_threshold=0.2, init_from_data=True, seed=1)(inputs)
    model = keras.Model(inputs, [z_q, idx])
    x = np.random.default_rng(5).normal(size=(2, 3, 3, 4)).astype("float32")
    model.layers[-1](x, training=True)  # move the codebook, so the saved state matters
    path = tmp_path / "q.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_array_equal(_np(a), _np(b))
    assert loaded.layers[-1].get_config()["init_from_data"] is True
    assert float(_np(loaded.layers[-1].initialized)) == 1.0


class _RandomTokens:
    """A stand-in prior: uniform code indices, seeded like a genlib model."""

    def __init__(self, num_codes, grid):
        self.num_codes, self.grid = num_codes, grid

    def generate(self, n, *, seed=None, batch_size=500, progress=None):  # no temperature, like PixelCategorical
        return np.random.default_rng(seed).integers(0, self.num_codes, (n, *self.grid, 1))


def test_two_stage_generator_decodes_prior_samples():
    model = vq.VQVAE((8, 8, 1), num_codes=8, code_dim=4, filters=(4, 8), seed=0)
    model.build()
    two_stage = vq.TwoStageGenerator(model, _RandomTokens(8, model.grid_shape))
    images = two_stage.generate(5, seed=1)
    assert isinstance(images, np.ndarray) and images.shape == (5, 8, 8, 1)
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, two_stage.generate(5, seed=1))  # same seed, same images
    tokens = two_stage.sample_tokens(5, seed=1)
    assert tokens.shape == (5, 2, 2, 1) and tokens.dtype == np.int32
    np.testing.assert_allclose(images, model.decode(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="generate"):
        vq.TwoStageGenerator(model, object())
    with pytest.raises(ValueError, match="VQVAE"):
        vq.TwoStageGenerator("model", _RandomTokens(8, (2, 2)))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_codes": 1, "code_dim": 4}, "num_codes"),
    ({"num_codes": True, "code_dim": 4}, "num_codes"),
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
    with pytest.raises(ValueError, match="filters"):
        vq.VQVAE(filters=())
    model = vq.VQVAE((8, 8, 1), num_codes=4, code_dim=2, filters=(4,))
    model.build()
    with pytest.raises(ValueError, match="expected images"):
        model(np.zeros((1, 9, 9, 1), "float32"))
    with pytest.raises(ValueError, match="expected indices"):
        model.decode(np.full((1, 4, 4), 7))
