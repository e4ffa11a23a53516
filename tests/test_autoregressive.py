"""Tests of genlib.autoregressive: causality by gradients, samplers, mixture likelihood, serialisation."""

import math

import keras
import numpy as np
import pytest
from scipy.special import expit, logsumexp

from genlib import autoregressive as ar
from genlib import distributions
from genlib._util import input_gradient


def _gradient_dependence(stack, shape=(5, 5, 1)):
    """D[i, j] = |d out_i / d in_j| summed over channels, over all positions of a small image.

    One gradient for all i: copy i of the image in a batch of H*W copies contributes only its
    output at position i, and copies do not interact, so row i of the gradient is d out_i / d in.
    """
    h, w, c = shape
    n = h * w
    x = np.repeat(np.random.default_rng(0).normal(size=(1, *shape)).astype("float32"), n, axis=0)
    select = keras.ops.convert_to_tensor(np.eye(n, dtype="float32"))

    def picked(t):
        for layer in stack:
            t = layer(t)
        return keras.ops.sum(keras.ops.reshape(keras.ops.sum(t, axis=-1), (n, n)) * select, axis=1)

    picked(x)  # build the layers outside the differentiated function
    g = keras.ops.convert_to_numpy(input_gradient(picked, x))
    return np.abs(g.sum(-1)).reshape(n, n)


def _nonzero_init_stack(first_type):
    init = keras.initializers.RandomNormal(stddev=1.0, seed=1)
    return [ar.MaskedConv2D(4, 3, first_type, activation="tanh", kernel_initializer=init),
            ar.MaskedConv2D(4, 3, "B", activation="tanh", kernel_initializer=init),
            ar.MaskedConv2D(2, 3, "B", kernel_initializer=init)]


def test_type_a_stack_is_causal_by_gradients():
    dep = _gradient_dependence(_nonzero_init_stack("A"))
    n = dep.shape[0]
    future = np.triu(np.ones((n, n), bool))  # j >= i: the pixel itself and everything after
    assert np.all(dep[future] == 0.0)
    # and it does see the past: the pixel just before, and the one above, for every pixel that has them
    assert all(dep[i, i - 1] > 0 for i in range(1, n) if i % 5)
    assert all(dep[i, i - 5] > 0 for i in range(5, n))


def test_type_b_sees_the_centre_and_nothing_after():
    dep = _gradient_dependence(_nonzero_init_stack("B"))
    n = dep.shape[0]
    assert np.all(np.diag(dep) > 0)
    assert np.all(dep[np.triu(np.ones((n, n), bool), k=1)] == 0.0)


def test_whole_pixelcnn_is_causal():
    model = ar.PixelCNN((6, 6, 1), levels=4, filters=8, num_blocks=2, head_layers=1)
    model.build()
    for w in model.weights:  # random, non-zero weights everywhere (zero biases would hide nothing)
        w.assign(np.random.default_rng(2).normal(size=w.shape).astype("float32") * 0.5)
    dep = _gradient_dependence(model.stack, (6, 6, 1))
    assert np.all(dep[np.triu(np.ones((36, 36), bool))] == 0.0)
    assert dep[35, 34] > 0 and dep[35, 0] > 0


def test_masks_and_bad_arguments():
    a, b = ar.kernel_mask(3, "A")[..., 0, 0], ar.kernel_mask(3, "B")[..., 0, 0]
    np.testing.assert_array_equal(a, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="odd"):
        ar.MaskedConv2D(8, 4, "A")
    with pytest.raises(ValueError, match="mask_type"):
        ar.MaskedConv2D(8, 3, "C")
    with pytest.raises(ValueError, match="even"):
        ar.ResidualBlock(7)
    with pytest.raises(ValueError, match="output_dist"):
        ar.PixelCNN(output_dist="gaussian")
    with pytest.raises(ValueError, match="one channel"):
        ar.PixelCNN(image_shape=(16, 16, 3))
    model = ar.PixelCNN((4, 4, 1), levels=2, filters=4, num_blocks=1)
    with pytest.raises(ValueError, match="temperature"):
        ar.sample_fast(model, 2, temperature=0.0)
    with pytest.raises(ValueError, match="noise must have shape"):
        ar.sample_naive(model, 2, noise=np.zeros((2, 4, 4, 3), "float32"))


@pytest.mark.parametrize("output_dist", ["categorical", "logistic_mixture"])
def test_fast_and_naive_samplers_agree(output_dist):
    levels = 4 if output_dist == "categorical" else 256
    model = ar.PixelCNN((8, 8, 1), levels=levels, filters=16, num_blocks=2, head_layers=1,
                        output_dist=output_dist, num_mixtures=3)
    model.build()
    noise = distributions.gumbel_noise((3, 8, 8, levels), seed=3)
    naive = ar.sample_naive(model, 3, temperature=0.8, noise=noise)
    fast = ar.sample_fast(model, 3, temperature=0.8, noise=noise)
    assert naive.shape == (3, 8, 8, 1) and naive.min() >= 0 and naive.max() < levels
    np.testing.assert_array_equal(naive, fast)
    # a seed gives the same noise to both, and different seeds give different images
    np.testing.assert_array_equal(ar.sample_fast(model, 3, seed=5), ar.sample_naive(model, 3, seed=5))
    assert not np.array_equal(ar.sample_fast(model, 3, seed=5), ar.sample_fast(model, 3, seed=6))


def test_row_outputs_match_the_full_network():
    model = ar.PixelCNN((6, 5, 1), levels=4, filters=8, num_blocks=2)
    q = np.random.default_rng(0).integers(0, 4, (2, 6, 5, 1)).astype("int32")
    full = keras.ops.convert_to_numpy(model(q))
    caches = model.empty_row_caches(2)
    for r in range(6):
        out, kept = model.row_outputs(caches, q[:, r: r + 1])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out), full[:, r], atol=1e-5)
        caches = [keras.ops.concatenate([c[:, 1:], k], axis=1) for c, k in zip(caches, kept)]


def _direct_mixture_probs(logit_pi, mu, log_s, levels=256):
    """P(q) for every q, from the logistic CDF at the bin edges (end bins open), in NumPy."""
    x = 2 * np.arange(levels) / (levels - 1) - 1
    upper = np.where(np.arange(levels) == levels - 1, np.inf, x + 1 / (levels - 1))
    lower = np.where(np.arange(levels) == 0, -np.inf, x - 1 / (levels - 1))
    pi = np.exp(logit_pi - logsumexp(logit_pi))
    s = np.exp(log_s)
    cdf = lambda t: expit((t[:, None] - mu) / s)
    return ((cdf(upper) - cdf(lower)) * pi).sum(-1)


def test_mixture_matches_direct_computation_and_sums_to_one():
    rng = np.random.default_rng(0)
    k = 3
    params = np.concatenate([rng.normal(size=(4, k)), rng.uniform(-0.9, 0.9, (4, k)),
                             rng.uniform(-3.5, -1.5, (4, k))], axis=-1).astype("float32")
    log_probs = keras.ops.convert_to_numpy(ar.discretized_logistic_mixture_log_probs(params, k))
    assert log_probs.shape == (4, 256)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-4)
    q = np.array([0, 17, 128, 255])
    nll = keras.ops.convert_to_numpy(ar.discretized_logistic_mixture_nll(q, params, k))
    for i in range(4):
        direct = _direct_mixture_probs(params[i, :k], params[i, k: 2 * k], params[i, 2 * k:])
        np.testing.assert_allclose(np.exp(log_probs[i]), direct, atol=1e-6)
        assert math.isclose(nll[i], -np.log(direct[q[i]]), rel_tol=1e-4)
    with pytest.raises(ValueError, match="3 \\* num_mixtures"):
        ar.discretized_logistic_mixture_nll(q, params, 2)


def test_training_lowers_bits_per_dim_and_reports_it():
    rng = np.random.default_rng(0)
    q = (rng.random((64, 6, 6, 1)) < np.linspace(0.1, 0.9, 36).reshape(1, 6, 6, 1)).astype("int32")
    model = ar.PixelCNN((6, 6, 1), levels=2, filters=8, num_blocks=1, head_layers=1)
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.bits_per_dim(q)
    history = model.fit(q, epochs=3, batch_size=32, verbose=0)
    assert "bits_per_dim" in history.history
    assert model.bits_per_dim(q) < before
    manual = -model.log_prob(q).mean() / (36 * math.log(2))
    assert math.isclose(model.bits_per_dim(q), manual, rel_tol=1e-6)


@pytest.mark.parametrize("output_dist", ["categorical", "logistic_mixture"])
def test_keras_round_trip(tmp_path, output_dist):
    model = ar.PixelCNN((8, 8, 1), levels=16, filters=8, num_blocks=1, output_dist=output_dist, num_mixtures=2)
    q = np.random.default_rng(0).integers(0, 16, (2, 8, 8, 1)).astype("int32")
    model.build()
    rng = np.random.default_rng(1)
    for w in model.weights:  # non-trivial weights everywhere, biases included
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.3)
    path = tmp_path / "pixelcnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ar.PixelCNN) and loaded.get_config()["output_dist"] == output_dist
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(q)), keras.ops.convert_to_numpy(model(q)),
                               atol=1e-6)
    layer = ar.MaskedConv2D(4, 5, "A", activation="relu")
    clone = ar.MaskedConv2D.from_config(layer.get_config())
    assert clone.mask_type == "A" and clone.kernel_size == 5
    np.testing.assert_array_equal(clone.mask, layer.mask)


@pytest.mark.parametrize("make", [
    lambda: ar.MaskedConv2D(True, 3),  # a bool is an int to Python, never a channel count
    lambda: ar.MaskedConv2D(4, True),
    lambda: ar.ResidualBlock(True),
    lambda: ar.PixelCNN(levels=True),
    lambda: ar.PixelCNN(num_blocks=-1),
    lambda: ar.PixelCNN(image_shape=(8, 8)),
])
def test_bools_and_bad_sizes_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_generate_returns_seeded_integer_images():
    model = ar.PixelCNN((6, 6, 1), levels=4, filters=8, num_blocks=1, head_layers=1)
    model.build()
    a = model.generate(5, seed=3, batch_size=2)  # three batches, one noise stream
    assert isinstance(a, np.ndarray) and a.shape == (5, 6, 6, 1) and a.dtype == np.int32
    assert a.min() >= 0 and a.max() < 4
    np.testing.assert_array_equal(a, model.generate(5, seed=3, batch_size=2))
    assert not np.array_equal(a, model.generate(5, seed=4, batch_size=2))
    np.testing.assert_array_equal(model.generate(3, seed=1, sampler="naive"), model.generate(3, seed=1))
    with pytest.raises(ValueError, match="sampler"):
        model.generate(2, sampler="slow")
    with pytest.raises(ValueError, match="temperature"):
        model.generate(2, temperature=-1.0)


def test_sampling_sees_weights_changed_after_the_first_sample():
    # The compiled sampling steps take the weights as state: under JAX they are not frozen at the first trace.
    model = ar.PixelCNN((4, 4, 1), levels=3, filters=4, num_blocks=1)
    model.build()
    before = model.generate(4, seed=0)
    out = model.stack[-1]
    out.bias.assign(np.array([0.0, 0.0, 50.0], "float32"))  # level 2 everywhere, whatever the inputs
    np.testing.assert_array_equal(model.generate(4, seed=0), 2)
    np.testing.assert_array_equal(ar.sample_naive(model, 2, seed=0), 2)
    assert not np.all(before == 2)
