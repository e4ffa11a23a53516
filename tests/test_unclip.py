"""The unCLIP prior (flow matching over embeddings), its regression baseline, and their helpers."""

import keras
import numpy as np
import pytest

from genlib import unclip

D = 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _toy_pairs(n=512, seed=0):
    """Four "captions"; each caption's images lie around one of two directions (a two-mode conditional)."""
    rng = np.random.default_rng(seed)
    text_dirs = _unit(rng.normal(size=(4, D)))
    image_dirs = _unit(rng.normal(size=(4, 2, D)))
    caption = rng.integers(0, 4, n)
    mode = rng.integers(0, 2, n)
    images = _unit(image_dirs[caption, mode] + 0.05 * rng.normal(size=(n, D)))
    return text_dirs[caption].astype("float32"), images.astype("float32"), caption, image_dirs


def test_flow_prior_loss_falls_and_samples_unit_vectors():
    keras.utils.set_random_seed(0)
    text, image, caption, image_dirs = _toy_pairs()
    prior = unclip.FlowPrior(D, width=64, depth=2, seed=0)
    prior.build()
    prior.compile(optimizer=keras.optimizers.Adam(3e-3))
    first = prior.evaluate((text, image), verbose=0, return_dict=True)["loss"]
    prior.fit((text, image), epochs=30, batch_size=64, verbose=0)
    last = prior.evaluate((text, image), verbose=0, return_dict=True)["loss"]
    assert last < 0.7 * first, (first, last)
    z = prior.generate(conditions=text[:200], seed=1, steps=16)
    assert z.shape == (200, D)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    # Samples land near one of their caption's two image directions, far more often than chance.
    best = np.einsum("nd,nkd->nk", z, image_dirs[caption[:200]]).max(axis=1)
    assert np.mean(best > 0.8) > 0.6, np.mean(best > 0.8)
    np.testing.assert_array_equal(z, prior.generate(conditions=text[:200], seed=1, steps=16))


def test_regression_prior_learns_the_mean_direction():
    keras.utils.set_random_seed(0)
    text, image, caption, image_dirs = _toy_pairs()
    reg = unclip.RegressionPrior(D, width=64, depth=2)
    reg.build()
    reg.compile(optimizer=keras.optimizers.Adam(3e-3))
    first = reg.evaluate(text, image, verbose=0, return_dict=True)["loss"]
    reg.fit(text, image, epochs=20, batch_size=64, verbose=0)
    last = reg.evaluate(text, image, verbose=0, return_dict=True)["loss"]
    assert last < 0.7 * first, (first, last)
    z = reg.generate(conditions=text[:50])
    mean_dir = _unit(image_dirs[caption[:50]].sum(axis=1))
    assert np.mean(np.sum(z * mean_dir, axis=1)) > 0.9
    assert z.shape == (50, D)


def test_guidance_zero_ignores_the_text():
    prior = unclip.FlowPrior(D, width=16, depth=1, seed=0)
    prior.build()
    c1, c2 = _unit(np.random.default_rng(0).normal(size=(2, 5, D))).astype("float32")
    np.testing.assert_allclose(prior.generate(conditions=c1, seed=2, guidance=0.0),
                               prior.generate(conditions=c2, seed=2, guidance=0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [unclip.FlowPrior, unclip.RegressionPrior])
def test_round_trip(tmp_path, cls):
    model = cls(D, width=16, depth=1)
    model.build()
    c = _unit(np.random.default_rng(1).normal(size=(4, D))).astype("float32")
    path = tmp_path / "prior.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.generate(conditions=c, seed=3), model.generate(conditions=c, seed=3),
                               rtol=1e-5, atol=1e-6)


def test_mean_pairwise_cosine():
    e = _unit(np.array([[1.0, 0], [1, 0], [0, 1], [1, 1]]))
    assert unclip.mean_pairwise_cosine(e, [0, 0, 1, 1]) == pytest.approx((1.0 + np.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="no pairs"):
        unclip.mean_pairwise_cosine(e, [0, 1, 2, 3])


class _FakeDecoder:
    condition_dim = D

    def generate(self, n, labels=None, seed=None, **kwargs):
        return np.tile(labels[:, :1, None, None], (1, 2, 2, 1))


def test_unclip_generate_runs_prior_then_decoder():
    prior = unclip.RegressionPrior(D, width=16, depth=1)
    c = _unit(np.random.default_rng(1).normal(size=(3, D))).astype("float32")
    images, z = unclip.unclip_generate(prior, _FakeDecoder(), c, seed=0)
    assert images.shape == (3, 2, 2, 1) and z.shape == (3, D)
    np.testing.assert_allclose(images[:, 0, 0, 0], z[:, 0])


def test_bad_arguments():
    prior = unclip.FlowPrior(D, width=16, depth=1)
    with pytest.raises(ValueError, match="conditions"):
        prior.generate(3)
    with pytest.raises(ValueError, match="embedding vectors"):
        prior.generate(conditions=np.zeros((3, D + 1)))
    with pytest.raises(ValueError, match="need n=4"):
        prior.generate(4, conditions=np.zeros((3, D)))
    with pytest.raises(ValueError, match="guidance"):
        prior.generate(conditions=np.zeros((3, D)), guidance=-1.0)
    with pytest.raises(ValueError, match="solver"):
        prior.generate(conditions=np.zeros((3, D)), solver="rk4")
    with pytest.raises(ValueError, match="condition_dropout"):
        unclip.FlowPrior(D, condition_dropout=1.0)
    with pytest.raises(ValueError, match="embed_dim"):
        unclip.RegressionPrior(0)
    with pytest.raises(ValueError, match="inputs"):
        prior(np.zeros((2, D)))
    with pytest.raises(ValueError, match="condition_dim"):
        unclip.unclip_generate(prior, object(), np.zeros((2, D)))
    with pytest.raises(ValueError, match="width"):
        unclip.PriorNetwork(D, width=True)
