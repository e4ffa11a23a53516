import math

import numpy as np
import pytest
from scipy import stats

from genlib import baselines


def test_pixel_categorical_normalised_and_exact():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 4, size=(200, 3, 3, 1))
    model = baselines.PixelCategorical(4, alpha=1.0).fit(q)
    np.testing.assert_allclose(np.exp(model.log_probs).sum(-1), 1.0)
    # One pixel by hand: (count + alpha) / (N + alpha * k).
    count = (q[:, 1, 2, 0] == 3).sum()
    assert model.log_probs[1, 2, 0, 3] == pytest.approx(math.log((count + 1) / (200 + 4)))
    x = q[:2]
    expected = sum(model.log_probs[i, j, 0, x[0, i, j, 0]] for i in range(3) for j in range(3))
    assert model.log_prob(x)[0] == pytest.approx(expected)


def test_pixel_categorical_uniform_data_gives_log2_k_bits():
    q = np.tile(np.arange(8).reshape(8, 1, 1, 1), (100, 2, 2, 1))
    model = baselines.PixelCategorical(8).fit(q)
    assert model.bits_per_dim(q) == pytest.approx(3.0, abs=1e-6)


def test_pixel_categorical_samples_follow_the_fit():
    q = np.zeros((50, 4, 4, 1), dtype=int)
    q[:, 0, 0, 0] = 2
    model = baselines.PixelCategorical(3, alpha=1e-3).fit(q)
    s = model.generate(200, seed=1)
    assert s.shape == (200, 4, 4, 1) and np.mean(s[:, 0, 0, 0] == 2) > 0.95 and np.mean(s[:, 1:] == 0) > 0.95


def test_pixel_categorical_bad_input():
    with pytest.raises(ValueError, match="levels"):
        baselines.PixelCategorical(1)
    model = baselines.PixelCategorical(4)
    with pytest.raises(ValueError, match="integer images"):
        model.fit(np.zeros((2, 3, 3, 1), dtype="float32"))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        model.fit(np.full((2, 3, 3, 1), 7))
    with pytest.raises(ValueError, match="fit first"):
        model.generate(2)
    with pytest.raises(ValueError, match="levels"):
        baselines.PixelCategorical(True)


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2, 2, 1)) @ np.eye(1) + 0.3
    model = baselines.GaussianBaseline(eps=0.0).fit(x)
    flat = x.reshape(500, -1)
    ref = stats.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False)).logpdf(flat[:5])
    np.testing.assert_allclose(model.log_prob(x[:5]), ref, rtol=1e-6)


def test_gaussian_samples_have_the_fitted_moments():
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    x = rng.multivariate_normal([2.0, -1.0], cov, size=5000).reshape(5000, 2, 1)
    s = baselines.GaussianBaseline(eps=0.0).fit(x).generate(20000, seed=2, clip=None).reshape(20000, 2)
    np.testing.assert_allclose(s.mean(0), [2.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.cov(s, rowvar=False), cov, atol=0.07)


def test_probabilistic_pca_keeps_top_components():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 6)) * np.array([5, 3, 1, 1, 1, 1.0])
    model = baselines.GaussianBaseline(n_components=2, eps=0.0).fit(x)
    assert model.eigval[:2] == pytest.approx([25, 9], rel=0.15)
    assert np.allclose(model.eigval[2:], model.eigval[2])


def test_uniform_noise():
    x = baselines.uniform_noise(10, (4, 4, 1), (-1, 1), seed=0)
    assert x.shape == (10, 4, 4, 1) and x.min() >= -1 and x.max() <= 1 and x.min() < -0.9


def test_generate_is_seeded_batched_and_in_the_data_convention():
    q = np.random.default_rng(0).integers(0, 5, size=(100, 3, 3, 1))
    pixel = baselines.PixelCategorical(5).fit(q)
    a = pixel.generate(7, seed=3, batch_size=2)
    assert isinstance(a, np.ndarray) and a.shape == (7, 3, 3, 1) and a.dtype == np.int32
    assert a.min() >= 0 and a.max() < 5
    np.testing.assert_array_equal(a, pixel.generate(7, seed=3))  # the batch size does not change the draws
    assert not np.array_equal(a, pixel.generate(7, seed=4))
    gauss = baselines.GaussianBaseline().fit(np.random.default_rng(1).uniform(size=(200, 2, 2, 1)))
    g = gauss.generate(9, seed=5, batch_size=4)
    assert g.shape == (9, 2, 2, 1) and g.dtype == np.float32 and g.min() >= 0 and g.max() <= 1
    np.testing.assert_array_equal(g, gauss.generate(9, seed=5))
    assert gauss.generate(50, seed=0, clip=(-1, 1)).min() >= -1
    for bad in (0, True):
        with pytest.raises(ValueError, match="n must"):
            gauss.generate(bad)
