import shutil

import numpy as np
import pytest

from genlib import data


def test_raw_fashion_mnist_shapes():
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.max() == 9 and y_test.min() == 0
    assert np.bincount(y_test).tolist() == [1000] * 10


@pytest.mark.parametrize("size", [16, 28, 32])
@pytest.mark.parametrize("value_range", [(0, 1), (-1, 1)])
def test_sizes_and_ranges(size, value_range):
    fm = data.fashion_mnist(size=size, value_range=value_range, n_train=100, n_test=50)
    assert fm.x_train.shape == (100, size, size, 1) and fm.x_test.shape == (50, size, size, 1)
    assert fm.x_train.dtype == np.float32
    low, high = value_range
    assert fm.x_train.min() >= low - 1e-6 and fm.x_train.max() <= high + 1e-6
    assert fm.x_train.min() < low + 0.01 and fm.x_train.max() > high - 0.2


def test_padding_uses_background():
    fm = data.fashion_mnist(size=32, value_range=(-1, 1), n_train=10, n_test=10)
    assert np.all(fm.x_train[:, :2] == -1) and np.all(fm.x_train[:, :, -2:] == -1)
    raw = data.fashion_mnist(size=32, value_range=None, n_train=10, n_test=10)
    assert raw.x_train.dtype == np.uint8 and np.all(raw.x_train[:, :2] == 0)


def test_downsample_preserves_mean():
    x = data.fashion_mnist(n_train=20, n_test=10).x_train
    small = data.downsample(x, 16)
    assert small.shape == (20, 16, 16, 1)
    np.testing.assert_allclose(small.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=0.02)


def test_downsample_is_an_area_average():
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 2)).astype("float32")
    # An integer ratio: the mean of each 2x2 block.
    np.testing.assert_allclose(data.downsample(x, 14), x.reshape(3, 14, 2, 14, 2, 2).mean(axis=(2, 4)), atol=1e-6)
    # 28 -> 16: output pixel 0 covers input cells [0, 1.75): cell 0 fully, cell 1 three quarters of the way.
    w = data.area_weights(28, 16)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[0, :3], [1 / 1.75, 0.75 / 1.75, 0.0])
    expected = (x[:, :1, :1] * 1 + x[:, :1, 1:2] * 0.75 + x[:, 1:2, :1] * 0.75 + x[:, 1:2, 1:2] * 0.75**2) / 1.75**2
    np.testing.assert_allclose(data.downsample(x, 16)[:, :1, :1], expected, atol=1e-6)


@pytest.mark.parametrize("levels", [2, 4, 16, 256])
def test_quantize_round_trip(levels):
    rng = np.random.default_rng(0)
    q = rng.integers(0, levels, size=(5, 8, 8, 1))
    x = data.dequantize(q, levels)
    assert x.min() > 0 and x.max() < 1
    np.testing.assert_array_equal(data.quantize(x, levels), q)
    np.testing.assert_array_equal(data.quantize(data.dequantize(q, levels, (-1, 1)), levels, (-1, 1)), q)


def test_quantize_uint8_and_edges():
    x = np.array([0, 63, 64, 127, 128, 255], dtype=np.uint8)
    np.testing.assert_array_equal(data.quantize(x, 4), [0, 0, 1, 1, 2, 3])
    np.testing.assert_array_equal(data.quantize(x, 256), x)
    np.testing.assert_array_equal(data.quantize(np.array([0.0, 1.0]), 4), [0, 3])


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="levels"):
        data.quantize(np.zeros(3), 1)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        data.dequantize(np.array([4]), 4)
    with pytest.raises(ValueError, match="value_range"):
        data.scale(np.zeros(3, np.uint8), (0, 255))
    with pytest.raises(ValueError, match="already floats"):
        data.scale(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="size"):
        data.fashion_mnist(size=20, n_train=5, n_test=5)
    with pytest.raises(ValueError, match=r"\(N, 28, 28, C\)"):
        data.pad_to_32(np.zeros((2, 30, 30, 1)))


def test_subset_is_seeded_and_balanced():
    (x, y), _ = data.load_fashion_mnist()
    xs, ys = data.subset(x, y, 1000, seed=3)
    xs2, ys2 = data.subset(x, y, 1000, seed=3)
    np.testing.assert_array_equal(xs, xs2)
    assert np.bincount(ys).tolist() == [100] * 10
    assert not np.array_equal(data.subset(x, None, 50, seed=1), data.subset(x, None, 50, seed=2))
    for bad in (0, True, 2.5):  # a bool is an int to Python, never a count
        with pytest.raises(ValueError, match="n must"):
            data.subset(x, y, bad)


@pytest.fixture
def local_copy(tmp_path, monkeypatch):
    """A private copy of the data folder, used as the only source."""
    source = data.data_dirs("fashion-mnist")[0]
    target = tmp_path / "fashion-mnist"
    shutil.copytree(source, target)
    for path in target.iterdir():
        path.chmod(0o644)
    monkeypatch.setenv("GENLIB_DATA_DIR", str(tmp_path))
    data.load_fashion_mnist.cache_clear()
    yield target
    data.load_fashion_mnist.cache_clear()


def test_corrupted_file_is_refused(local_copy):
    victim = local_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(data.ChecksumError) as err:
        data.load_fashion_mnist()
    message = str(err.value)
    assert str(victim) in message
    assert data.FASHION_MNIST_SHA256["t10k-labels-idx1-ubyte.gz"] in message
    assert data.sha256(victim) in message


def test_offline_without_copy_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "nowhere")

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    import keras

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    data.load_fashion_mnist.cache_clear()
    try:
        with pytest.raises(data.DataUnavailableError) as err:
            data.load_fashion_mnist()
    finally:
        data.load_fashion_mnist.cache_clear()
    assert "GENLIB_DATA_DIR" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_tiny_shakespeare():
    train, val, vocab = data.tiny_shakespeare(val_fraction=0.1)
    assert len(train) + len(val) == 1_115_394
    assert len(vocab) == 65
    assert vocab.decode(vocab.encode("To be, or not to be")) == "To be, or not to be"
    assert train.dtype == np.int32 and train.max() < len(vocab)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("naïve")
    with pytest.raises(ValueError, match="val_fraction"):
        data.tiny_shakespeare(val_fraction=1.5)


def test_dequantized_draws_fresh_noise_every_epoch_inside_each_bin():
    q = np.random.default_rng(0).integers(0, 256, size=(10, 4, 4, 1))
    batches = data.Dequantized(q, batch_size=4, seed=1)
    assert len(batches) == 3 and batches[2].shape == (2, 4, 4, 1) and batches[0].dtype == np.float32
    first = np.concatenate([batches[i] for i in range(len(batches))])
    order = batches.order.copy()
    np.testing.assert_array_equal(np.floor(first * 256).astype(int), q[order])  # each value stays in its bin
    np.testing.assert_array_equal(data.Dequantized(q, 4, seed=1)[0], batches[0])  # reproducible under a seed
    batches.on_epoch_end()
    second = np.concatenate([batches[i] for i in range(len(batches))])
    assert not np.array_equal(batches.order, order)  # reshuffled
    fresh = second[np.argsort(batches.order)] - first[np.argsort(order)]
    assert np.abs(fresh).min() > 0  # new noise for every pixel, not the epoch-1 draw again
    for bad in [dict(q=q / 255.0), dict(q=q, batch_size=True), dict(q=q + 300), dict(q=q, shuffle=1)]:
        kwargs = {"batch_size": 4, **bad}
        with pytest.raises((TypeError, ValueError)):
            data.Dequantized(**kwargs)


def test_dequantized_feeds_a_vae_fit():
    from genlib import vae

    q = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1))
    model = vae.VAE(vae.build_encoder((8, 8, 1), 2, (4,), 8), vae.build_decoder(2, (8, 8, 1), (4,), 8), seed=0)
    model.compile(optimizer="adam")
    history = model.fit(data.Dequantized(q, batch_size=8), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
