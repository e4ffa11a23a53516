"""Tests of genlib.vqgan: perceptual loss, patch discriminator, adaptive weight, VQGAN training and saving, GPT prior.

Backend-neutral: run under TensorFlow, JAX and PyTorch.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util, metrics, vq, vqgan


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def features():
    keras.utils.set_random_seed(0)
    return metrics.hidden_features_model(metrics.build_classifier())  # untrained weights suffice for the math


def test_hidden_features_model_gives_the_conv_maps_and_leaves_the_classifier_alone(features):
    classifier = metrics.build_classifier()
    maps = metrics.hidden_features_model(classifier)
    out = maps(np.zeros((2, 28, 28, 1), "float32"))
    assert [tuple(o.shape) for o in out] == [(2, 14, 14, 32), (2, 7, 7, 64)]
    assert not maps.trainable_weights and len(classifier.trainable_weights) == 8  # the classifier stays trainable
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
    conv = next(layer for layer in classifier.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_allclose(_np(maps(x)[0]), _np(keras.Model(classifier.input, conv.output)(x)), atol=1e-5)
    with pytest.raises(ValueError, match="Conv2D"):
        metrics.hidden_features_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_perceptual_loss_is_zero_for_identical_images_and_grows_with_noise(features):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(8, 28, 28, 1)).astype("float32")
    assert float(vqgan.perceptual_loss(features, x, x)) == pytest.approx(0.0, abs=1e-7)
    losses = [float(vqgan.perceptual_loss(features, x, np.clip(x + s * rng.normal(size=x.shape), 0, 1)
                                          .astype("float32"))) for s in (0.05, 0.2, 0.5)]
    assert 0 < losses[0] < losses[1] < losses[2], losses
    # By hand: unit-normalised feature vectors, squared distance, mean over positions, summed over layers.
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype("float32")
    expected = 0.0
    for fx, fy in zip(features(x), features(y)):
        fx, fy = _np(fx).astype("float64"), _np(fy).astype("float64")
        nx = fx / np.sqrt((fx ** 2).sum(-1, keepdims=True) + 1e-6)
        ny = fy / np.sqrt((fy ** 2).sum(-1, keepdims=True) + 1e-6)
        expected += ((nx - ny) ** 2).sum(-1).mean()
    assert float(vqgan.perceptual_loss(features, x, y)) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="same image shape"):
        vqgan.perceptual_loss(features, x, x[:, :14])


def test_patch_discriminator_scores_every_patch():
    d = vqgan.build_patch_discriminator((28, 28, 1), filters=8)
    assert tuple(d.output.shape) == (None, 7, 7, 1)
    assert d(np.zeros((3, 28, 28, 1), "float32")).shape == (3, 7, 7, 1)
    # A pixel changes only the logits whose window holds it: patches, not one global score.
    x = np.zeros((1, 28, 28, 1), "float32")
    bumped = x.copy()
    bumped[0, 0, 0, 0] = 1.0
    changed = np.abs(_np(d(bumped)) - _np(d(x)))[0, ..., 0] > 0
    assert changed[0, 0] and not changed[-1, -1]
    assert tuple(vqgan.build_patch_discriminator((16, 16, 1), filters=4).output.shape) == (None, 4, 4, 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        vqgan.build_patch_discriminator((30, 30, 1))


def test_hinge_losses():
    real, fake = np.array([2.0, 0.5, -1.0]), np.array([-2.0, 0.0, 1.0])
    expected = np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake))
    assert float(vqgan.hinge_discriminator_loss(real, fake)) == pytest.approx(expected)
    assert float(vqgan.hinge_generator_loss(fake)) == pytest.approx(-fake.mean())


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(16, 5)).astype("float32")
    target = rng.normal(size=(16, 3)).astype("float32")
    v = rng.normal(size=(16, 3)).astype("float32")
    w = keras.Variable(rng.normal(size=(5, 3)).astype("float32"))
    th, tt, tv = (ops.convert_to_tensor(a) for a in (h, target, v))  # tensors: torch refuses NumPy - tensor
    rec = lambda: ops.mean(ops.square(ops.matmul(th, w.value) - tt))  # noqa: E731
    adv = lambda: ops.mean(ops.matmul(th, w.value) * tv)  # noqa: E731
    # The gradients in closed form: d/dW mean((hW - t)^2) = 2 h^T (hW - t) / (16*3), d/dW mean(hW * v) = h^T v / (16*3).
    g_rec = 2 * h.T @ (h @ _np(w) - target) / 48
    g_adv = h.T @ v / 48
    expected = np.linalg.norm(g_rec) / (np.linalg.norm(g_adv) + 1e-4)
    assert float(vqgan.adaptive_weight(rec, adv, [w])) == pytest.approx(expected, rel=1e-4)
    assert float(vqgan.adaptive_weight(rec, adv, [w], max_weight=0.5)) == pytest.approx(min(expected, 0.5))
    # No adversarial gradient: lambda is ||g_rec|| / delta, clipped.
    assert float(vqgan.adaptive_weight(rec, lambda: 1.0 + 0.0 * ops.sum(w.value), [w],
                                       delta=1.0)) == pytest.approx(np.linalg.norm(g_rec), rel=1e-4)


def _small_vqgan(features, **kwargs):
    options = dict(num_codes=8, code_dim=4, filters=(4, 8), perceptual=features, seed=0,
                   discriminator=vqgan.build_patch_discriminator((28, 28, 1), filters=4))
    return vqgan.VQGAN((28, 28, 1), **{**options, **kwargs})


def test_model_adaptive_weight_matches_gradients_through_the_whole_model(features):
    model = _small_vqgan(features)
    model.compile()
    x = np.random.default_rng(3).uniform(size=(4, 28, 28, 1)).astype("float32")
    lam, x_hat = model.adaptive_weight_for(x)
    np.testing.assert_allclose(_np(x_hat), _np(model(x)["reconstruction"]), atol=1e-5)
    kernel = model.last_layer.kernel
    _, g_loss = vqgan.GAN_LOSSES["hinge"]

    def through_everything(part):  # the whole forward pass, encoder included
        def fn():
            out = model(x)["reconstruction"]
            return model.reconstruction_loss(x, out)[0] if part == "rec" else g_loss(model.discriminator(out))
        return fn

    norms = [float(vqgan.gradient_norm(_util.value_and_grad(through_everything(p), [kernel])[2]))
             for p in ("rec", "gan")]
    assert float(lam) == pytest.approx(norms[0] / (norms[1] + 1e-4), rel=1e-3)


def test_vqgan_trains_both_nets_after_the_start_delay_and_round_trips(features, tmp_path):
    x = np.random.default_rng(4).uniform(size=(32, 28, 28, 1)).astype("float32")
    model = _small_vqgan(features, disc_start=2, grid_shape=(4, 4))
    model.compile()
    d0 = [_np(w).copy() for w in model.discriminator.trainable_variables]
    snapshots = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        [_np(w).copy() for w in model.discriminator.trainable_variables]))
    history = model.fit(x[:16], epochs=3, batch_size=8, verbose=0, callbacks=[keep]).history
    # Epoch 1 is 2 steps, still before disc_start: D has not moved. By epoch 3 it has.
    assert all(np.array_equal(a, b) for a, b in zip(d0, snapshots[0]))
    assert set(vqgan.VQGAN.metric_names) <= set(history)
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert any(not np.array_equal(a, _np(b)) for a, b in zip(d0, model.discriminator.trainable_variables))
    assert history["adaptive_weight"][-1] > 0
    assert model.encode(x).shape == (32, 4, 4, 1) and model.grid_shape == (4, 4)
    path = tmp_path / "vqgan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, vqgan.VQGAN) and isinstance(loaded, vq.VQVAE)
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))
    np.testing.assert_allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-5)
    np.testing.assert_allclose(_np(loaded.discriminator(x)), _np(model.discriminator(x)), atol=1e-5)
    assert loaded.get_config()["disc_start"] == 2 and not loaded.perceptual.trainable_weights


def test_vqvae_grid_shape_gives_the_seven_fold_downsampling(tmp_path):
    model = vq.VQVAE((28, 28, 1), num_codes=8, code_dim=4, filters=(4, 8), grid_shape=(4, 4), seed=0)
    model.build()
    x = np.random.default_rng(5).uniform(size=(3, 28, 28, 1)).astype("float32")
    out = model(x)
    assert out["indices"].shape == (3, 4, 4) and out["reconstruction"].shape == (3, 28, 28, 1)
    assert model.bits_per_image() == pytest.approx(16 * 3)
    path = tmp_path / "v.keras"
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).reconstruct(x), model.reconstruct(x), atol=1e-6)
    with pytest.raises(ValueError, match="grid_shape"):
        vq.VQVAE((28, 28, 1), filters=(4, 8), grid_shape=(8, 8))


@pytest.fixture(scope="module")
def trained_prior():
    return _trained_prior()


def _trained_prior(grid=(2, 3), k=5):
    rng = np.random.default_rng(6)
    # Structured grids: each row repeats its first code, so a prior can beat independent positions.
    first = rng.integers(0, k, size=(256, grid[0], 1))
    q = np.repeat(first, grid[1], axis=2)[..., None]
    keras.utils.set_random_seed(0)
    prior = vqgan.GPTPrior(k, grid, width=16, depth=1, num_heads=2)
    prior.compile(optimizer=keras.optimizers.Adam(1e-2))
    prior.fit(*prior.sequences(q), epochs=6, batch_size=32, verbose=0)
    return prior, q


def test_gpt_prior_log_likelihood_matches_a_direct_computation(trained_prior, tmp_path):
    prior, q = trained_prior
    k, n_tokens = prior.num_codes, 6
    logp = prior.log_prob(q[:4])
    # Directly: one forward pass per prefix, bos first; sum the log-softmax of each next code.
    for i in range(4):
        seq = q[i].reshape(-1)
        total = 0.0
        for t in range(n_tokens):
            context = np.array([[k, *seq[:t]]], "int32")
            logits = _np(prior(context))[0, -1].astype("float64")
            total += logits[seq[t]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        assert logp[i] == pytest.approx(total, rel=1e-4, abs=1e-4)
    assert prior.bits_per_token(q[:4]) == pytest.approx(-logp.mean() / (n_tokens * math.log(2)))
    # It learned the structure: far below log2 K bits per code.
    assert prior.bits_per_token(q) < 0.75 * math.log2(k)
    path = tmp_path / "prior.keras"
    prior.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, vqgan.GPTPrior) and loaded.grid_shape == (2, 3)
    np.testing.assert_allclose(loaded.log_prob(q[:8]), prior.log_prob(q[:8]), rtol=1e-5)


def test_gpt_prior_samples_valid_grids(trained_prior):
    prior, _ = trained_prior
    grids = prior.generate(40, seed=0, top_k=3, progress=False)
    assert grids.shape == (40, 2, 3, 1) and grids.dtype == np.int32
    assert grids.min() >= 0 and grids.max() < prior.num_codes  # never the start token
    np.testing.assert_array_equal(grids, prior.generate(40, seed=0, top_k=3, progress=False))
    greedy = prior.generate(40, seed=1, temperature=0.0, progress=False)
    assert (greedy[..., 0] == greedy[:, :, :1, 0]).mean() > 0.8  # rows repeat their first code, as in training
    # A start token the model has not unlearned is redrawn: force it by biasing the head towards it.
    bias = prior.head.bias
    saved = _np(bias).copy()
    bias.assign(np.where(np.arange(len(saved)) == prior.bos, 50.0, saved).astype("float32"))
    with pytest.raises(RuntimeError, match="start token"):
        prior.generate(40, seed=0, max_redraws=1, progress=False)
    bias.assign(saved)


def test_two_stage_generator_with_the_gpt_prior(features):
    model = _small_vqgan(features, grid_shape=(4, 4))
    model.build()
    prior = vqgan.GPTPrior(8, (4, 4), width=8, depth=1, num_heads=2)
    two_stage = vq.TwoStageGenerator(model, prior)
    images = two_stage.generate(3, seed=0, top_k=4, temperature=0.8, progress=False)
    assert images.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(images, model.decode(two_stage.sample_tokens(3, seed=0, top_k=4, temperature=0.8,
                                                                            progress=False)), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"disc_start": -1}, "disc_start"),
    ({"disc_start": True}, "disc_start"),
    ({"gan_loss": "wasserstein"}, "gan_loss"),
    ({"perceptual_weight": -1.0}, "perceptual_weight"),
    ({"disc_weight": float("nan")}, "disc_weight"),
    ({"delta": 0.0}, "delta"),
    ({"discriminator": "patch"}, "discriminator"),
    ({"perceptual": lambda x: x}, "perceptual"),
    ({"grid_shape": (9, 9)}, "grid_shape"),
])
def test_vqgan_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vqgan.VQGAN((28, 28, 1), num_codes=8, code_dim=4, filters=(4, 8), **kwargs)


def test_gpt_prior_bad_arguments():
    with pytest.raises(ValueError, match="num_codes"):
        vqgan.GPTPrior(1, (2, 2))
    with pytest.raises(ValueError, match="grid_shape"):
        vqgan.GPTPrior(4, (2, 0))
    prior = vqgan.GPTPrior(4, (2, 2), width=8, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="token grids"):
        prior.sequences(np.zeros((3, 3, 2), "int32"))
    with pytest.raises(ValueError, match="codes must lie"):
        prior.sequences(np.full((3, 2, 2), 4))
    with pytest.raises(ValueError, match="token grids"):
        prior.log_prob(np.zeros((3, 2, 2), "float32"))
    with pytest.raises(ValueError, match="adaptive|top_k"):
        prior.generate(2, top_k=0, progress=False)
