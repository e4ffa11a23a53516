"""Tests of genlib.latent: shapes for any image size, the autoencoder's round trip and its scale factor,
the latent generator, serialisation and bad arguments."""

import keras  # noqa: I001
import numpy as np
import pytest

from genlib import flow_matching as fm
from genlib import latent


def blobs(n, size=16, seed=0):
    """Images in [-1, 1]: a bright square of random size and place on a dark background."""
    rng = np.random.default_rng(seed)
    x = -np.ones((n, size, size, 1), "float32")
    for i in range(n):
        a, b = rng.integers(0, size // 2, 2)
        w = rng.integers(3, size // 2)
        x[i, a: a + w, b: b + w] = 1.0
    return x


@pytest.mark.parametrize("shape,filters,channels", [((16, 16, 1), (8, 16), 4), ((32, 24, 3), (8,), 2),
                                                    ((32, 32, 1), (8, 8, 16), 3)])
def test_shapes_for_any_size(shape, filters, channels):
    ae = latent.LatentAutoencoder(shape, latent_channels=channels, filters=filters)
    s = 2 ** len(filters)
    assert ae.downsampling == s and ae.latent_shape == (shape[0] // s, shape[1] // s, channels)
    x = np.zeros((2, *shape), "float32")
    assert ae.encode(x).shape == (2, *ae.latent_shape)
    assert ae.reconstruct(x).shape == (2, *shape)
    out = ae(x)
    assert out["z"].shape == out["z_mean"].shape == out["z_log_var"].shape == (2, *ae.latent_shape)


@pytest.fixture(scope="module")
def trained():
    x = blobs(256)
    ae = latent.LatentAutoencoder((16, 16, 1), latent_channels=2, filters=(16, 16), kl_weight=1e-4, seed=0)
    ae.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = float(np.abs(ae.reconstruct(x) - x).mean())
    hist = ae.fit(x, epochs=12, batch_size=32, verbose=0).history
    return ae, x, before, hist


def test_round_trip_learns(trained):
    ae, x, before, hist = trained
    after = float(np.abs(ae.reconstruct(x) - x).mean())
    assert hist["loss"][-1] < hist["loss"][0]
    assert after < 0.5 * before, (before, after)
    rec = ae.reconstruct(x)
    assert rec.min() >= -1 and rec.max() <= 1  # clipped to the value range
    # The KL term is in nats per image, summed over the latent's elements.
    assert np.isfinite(hist["kl"]).all() and hist["kl"][-1] > 0


def test_scale_factor_gives_unit_variance_latents(trained):
    ae, x, _, _ = trained
    scale = ae.fit_scale_factor(x)
    z = ae.to_latent(x)
    np.testing.assert_allclose(z.std(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(scale, 1 / ae.encode(x).std(), rtol=1e-5)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(ae.scale_factor)), scale, rtol=1e-6)
    # Scaling is undone on the way back: from_latent(to_latent(x)) is the plain reconstruction.
    np.testing.assert_allclose(ae.from_latent(z), ae.reconstruct(x), atol=1e-5)
    with pytest.raises(ValueError, match="standard deviation"):
        latent.LatentAutoencoder((16, 16, 1), filters=(8, 8)).fit_scale_factor(np.zeros((4, 16, 16, 1)))


def test_latent_generator_generates_images_and_round_trips(trained, tmp_path):
    ae, x, _, _ = trained
    ae.fit_scale_factor(x)
    prior = fm.FlowMatchingModel(image_shape=ae.latent_shape, widths=(8, 16), groups=4, clip=None, seed=0)
    prior.build()
    prior.compile(optimizer=keras.optimizers.Adam(3e-3))
    z = ae.to_latent(x)
    prior.fit(z, epochs=1, batch_size=64, verbose=0)
    gen = latent.LatentGenerator(ae, prior)
    out = gen.generate(5, seed=1, steps=3, solver="heun", progress=False)
    assert out.shape == (5, 16, 16, 1) and out.min() >= -1 and out.max() <= 1
    np.testing.assert_allclose(out, ae.from_latent(prior.generate(5, seed=1, steps=3, solver="heun")), atol=1e-5)
    path = tmp_path / "latent.keras"
    gen.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, latent.LatentGenerator)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loaded.autoencoder.scale_factor)),
                               float(keras.ops.convert_to_numpy(ae.scale_factor)))
    np.testing.assert_allclose(loaded.generate(5, seed=1, steps=3, solver="heun"), out, atol=1e-5)


def test_autoencoder_round_trips_through_keras(trained, tmp_path):
    ae, x, _, _ = trained
    ae.save(tmp_path / "ae.keras")
    loaded = keras.saving.load_model(tmp_path / "ae.keras")
    assert loaded.kl_weight == ae.kl_weight and loaded.latent_shape == ae.latent_shape
    np.testing.assert_allclose(loaded.reconstruct(x[:8]), ae.reconstruct(x[:8]), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        latent.LatentAutoencoder((28, 28, 1), filters=(8, 8, 8))
    with pytest.raises(ValueError, match="filters"):
        latent.LatentAutoencoder((16, 16, 1), filters=())
    with pytest.raises(ValueError, match="latent_channels"):
        latent.LatentAutoencoder((16, 16, 1), latent_channels=0)
    with pytest.raises(ValueError, match="kl_weight"):
        latent.LatentAutoencoder((16, 16, 1), kl_weight=-1e-6)
    with pytest.raises(ValueError, match="value_range"):
        latent.LatentAutoencoder((16, 16, 1), value_range=(1, 0))
    ae = latent.LatentAutoencoder((16, 16, 1), latent_channels=2, filters=(8, 8))
    with pytest.raises(ValueError, match="expected images"):
        ae.encode(np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="expected latents"):
        ae.decode(np.zeros((2, 8, 8, 1)))
    wrong = fm.FlowMatchingModel(image_shape=(8, 8, 1), widths=(8,), groups=4, clip=None)
    with pytest.raises(ValueError, match="latents of shape"):
        latent.LatentGenerator(ae, wrong)
    with pytest.raises(ValueError, match="LatentAutoencoder"):
        latent.LatentGenerator("ae", wrong)
