import math

import numpy as np
import pytest

from genlib import baselines, data, metrics


def test_bits_per_dim_conventions():
    assert metrics.bits_per_dim(10 * math.log(2), 10) == pytest.approx(1.0)
    # A continuous density on [0, 1] data from 256 levels: add log2(256) = 8 bits per dim.
    assert metrics.bits_per_dim(0.0, 784, levels=256) == pytest.approx(8.0)
    np.testing.assert_allclose(metrics.bits_per_dim(np.array([0.0, 784 * math.log(2)]), 784), [0.0, 1.0])
    with pytest.raises(ValueError, match="num_dims"):
        metrics.bits_per_dim(1.0, 0)


def test_prepare_images_conventions():
    x01 = data.fashion_mnist(n_train=8, n_test=8).x_test
    ref = metrics.prepare_images(x01)
    assert ref.shape == (8, 28, 28, 1)
    np.testing.assert_allclose(metrics.prepare_images(x01 * 2 - 1), ref, atol=1e-6)
    np.testing.assert_allclose(metrics.prepare_images((x01 * 255).round().astype(np.uint8)), ref, atol=1 / 255)
    np.testing.assert_allclose(metrics.prepare_images(x01[..., 0]), ref)
    np.testing.assert_allclose(metrics.prepare_images(data.pad_to_32(x01)), ref)
    np.testing.assert_allclose(metrics.prepare_images(np.repeat(x01, 3, axis=-1)), ref, atol=1e-6)
    assert metrics.prepare_images(data.downsample(x01, 16)).shape == (8, 28, 28, 1)


def test_prepare_images_says_what_is_wrong():
    with pytest.raises(ValueError, match="16/28/32"):
        metrics.prepare_images(np.zeros((2, 20, 20, 1)))
    with pytest.raises(ValueError, match="outside"):
        metrics.prepare_images(np.full((2, 28, 28, 1), 200.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.prepare_images(np.full((2, 28, 28, 1), np.nan))


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    # Diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 = 3 * 1 + 3 * (1 - 2)^2 = 6.
    assert metrics.frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_unbiased():
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    mean, std = metrics.kernel_inception_distance(same_a, same_b, subsets=100, subset_size=50)
    assert abs(mean) < 3 * std / math.sqrt(100)
    shifted = rng.normal(0.3, 1.0, size=(4000, 8))
    small = metrics.kernel_inception_distance(same_a, shifted, subsets=200, subset_size=50)
    large = metrics.kernel_inception_distance(same_a, shifted, subsets=50, subset_size=1000)
    # The biased estimator drifts by O(1/m) between m = 50 and 1000; the unbiased one agrees.
    assert abs(small[0] - large[0]) < 3 * small[1] / math.sqrt(200) + 3 * large[1] / math.sqrt(50)


def test_manifold_scores_of_a_set_with_itself():
    f = np.random.default_rng(0).normal(size=(300, 5))
    precision, recall, density, coverage = metrics.manifold_scores(f, f)
    assert precision == 1.0 and recall == 1.0 and coverage == 1.0 and density >= 1.0


def test_bad_features():
    with pytest.raises(ValueError, match="same D"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="more than k"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((3, 2)))


def test_classifier_accuracy(classifier):
    assert classifier.test_accuracy >= 0.85


def test_fid_kid_real_vs_real_is_near_zero_and_below_baselines(classifier):
    train = data.fashion_mnist(n_train=1000, n_test=10).x_train
    real = metrics.evaluate_samples(train, classifier=classifier)
    gauss = baselines.GaussianBaseline().fit(data.fashion_mnist(n_train=5000, n_test=10).x_train).generate(1000, seed=0)
    fake = metrics.evaluate_samples(gauss, classifier=classifier)
    noise = metrics.evaluate_samples(baselines.uniform_noise(1000), classifier=classifier)
    assert real["fid"] < 0.1 * fake["fid"]
    assert abs(real["kid"]) < 3 * real["kid_std"] + 0.01
    assert fake["fid"] * 1.5 < noise["fid"] and fake["kid"] < noise["kid"]
    assert real["precision"] > 0.7 and real["recall"] > 0.7 and real["coverage"] > 0.8
    assert noise["recall"] < 0.05 and noise["coverage"] < 0.1


def test_fid_grows_with_noise(classifier):
    x = data.fashion_mnist(n_train=10, n_test=1000).x_test
    rng = np.random.default_rng(0)
    fids, kids = [], []
    for sigma in [0.0, 0.1, 0.2, 0.4]:
        noisy = np.clip(x + sigma * rng.normal(size=x.shape), 0, 1).astype("float32")
        scores = metrics.evaluate_samples(noisy, classifier=classifier)
        fids.append(scores["fid"])
        kids.append(scores["kid"])
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids


def test_sizes_are_compared_like_for_like(classifier):
    small = data.fashion_mnist(size=16, n_train=1000, n_test=10).x_train
    assert metrics.evaluate_samples(small, classifier=classifier)["fid"] < 2.0


def test_conditional_accuracy_and_nearest_neighbours(classifier):
    fm = data.fashion_mnist(n_train=500, n_test=500)
    acc = metrics.conditional_accuracy(fm.x_test, fm.y_test, classifier=classifier)
    shuffled = metrics.conditional_accuracy(fm.x_test, np.roll(fm.y_test, 1), classifier=classifier)
    assert acc > 0.8 and shuffled < 0.3
    idx, dist = metrics.nearest_neighbours(fm.x_train[:20], fm.x_train)
    np.testing.assert_array_equal(idx, np.arange(20))
    np.testing.assert_allclose(dist, 0.0, atol=0.02)  # |a|^2 + |b|^2 - 2ab loses ~1e-5 to rounding
    _, test_dist = metrics.nearest_neighbours(fm.x_test[:20], fm.x_train)
    assert test_dist.min() > 0.5
    with pytest.raises(ValueError, match="labels"):
        metrics.conditional_accuracy(fm.x_test, fm.y_test[:3], classifier=classifier)
