"""Tests of genlib.flows: invertibility, log-determinants against autodiff Jacobians, masks,
dequantisation, the Gaussian density of an identity flow, bad arguments and serialisation."""

import math

import keras
import numpy as np
import pytest
from scipy.stats import norm

from genlib import distributions, flows
from genlib._util import input_gradient


def _randomise(layer_or_model, scale=0.3, seed=0):
    """Random non-zero weights everywhere: the zero-initialised last layers would make every coupling the identity."""
    rng = np.random.default_rng(seed)
    for w in layer_or_model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * scale)


def _built(layer, shape):
    layer.build((None, *shape))
    return layer


def _autodiff_log_det(fn, x):
    """log |det J| of fn at each example of x, the Jacobian from one input gradient.

    Each example is repeated once per output entry k, and copy k contributes only its entry k:
    the examples do not interact, so the gradient of copy k is row k of that example's Jacobian.
    """
    n, num_in = len(x), int(np.prod(x.shape[1:]))
    num_out = int(np.prod(keras.ops.shape(fn(x[:1]))[1:]))
    copies = np.repeat(x, num_out, axis=0)  # (n * num_out, ...)
    select = keras.ops.convert_to_tensor(np.tile(np.eye(num_out, dtype="float32"), (n, 1)))

    def picked(t):
        return keras.ops.sum(keras.ops.reshape(fn(t), (n * num_out, num_out)) * select, axis=1)

    jac = keras.ops.convert_to_numpy(input_gradient(picked, copies)).reshape(n, num_out, num_in)
    return np.linalg.slogdet(jac.astype("float64"))[1]


def _images(shape=(4, 4, 1), n=3, seed=1):
    """Images in (0, 1), or standard-normal vectors for a shape (D,)."""
    rng = np.random.default_rng(seed)
    if len(shape) == 1:
        return rng.normal(size=(n, *shape)).astype("float32")
    return rng.uniform(0.02, 0.98, size=(n, *shape)).astype("float32")


LAYERS = [
    ("coupling checkerboard image", lambda: flows.AffineCoupling("checkerboard", 0, hidden=6), (4, 4, 2)),
    ("coupling checkerboard image, parity 1", lambda: flows.AffineCoupling("checkerboard", 1, hidden=6), (4, 4, 1)),
    ("coupling channel image", lambda: flows.AffineCoupling("channel", 1, hidden=6), (2, 2, 4)),
    ("coupling vector", lambda: flows.AffineCoupling("checkerboard", 0, hidden=8), (5,)),
    ("coupling vector channel", lambda: flows.AffineCoupling("channel", 1, hidden=8), (4,)),
    ("squeeze", lambda: flows.Squeeze(), (4, 4, 2)),
    ("logit", lambda: flows.LogitTransform(0.05), (4, 4, 1)),
    ("elementwise affine", lambda: flows.ElementwiseAffine(), (3, 3, 2)),
]


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[entry[0] for entry in LAYERS])
def test_every_layer_inverts_and_its_log_det_matches_autodiff(name, make, shape):
    layer = _built(make(), shape)
    _randomise(layer)
    x = _images(shape)
    y, log_det = layer.transform(x)
    x_back, inv_log_det = layer.inverse(y)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x_back), x, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inv_log_det), -keras.ops.convert_to_numpy(log_det),
                               atol=1e-4)
    expected = _autodiff_log_det(lambda t: layer.transform(t)[0], x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), expected, rtol=1e-4, atol=1e-4)
    if "coupling" in name:  # the check means something only if the coupling does move its input
        assert np.abs(keras.ops.convert_to_numpy(y) - x).max() > 0.05


@pytest.mark.parametrize("event_shape, kwargs", [((4, 4, 1), {"num_scales": 2, "couplings_per_scale": 2}),
                                                 ((8, 8, 1), {"num_scales": 3, "couplings_per_scale": 2}),
                                                 ((2,), {"num_scales": 1, "couplings_per_scale": 4})])
def test_whole_model_inverts_and_log_det_matches_autodiff(event_shape, kwargs):
    model = flows.RealNVP(event_shape, hidden=6, num_hidden=1, **kwargs)
    model.build()
    _randomise(model, scale=0.2)
    x = _images(event_shape)
    z, log_det = model.transform(x)
    assert tuple(z.shape) == (len(x), int(np.prod(event_shape)))
    x_back, inv_log_det = model.inverse(z)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x_back), x, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inv_log_det), -keras.ops.convert_to_numpy(log_det),
                               atol=1e-3)
    if np.prod(event_shape) <= 16:
        expected = _autodiff_log_det(lambda t: model.transform(t)[0], x)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), expected, rtol=1e-4, atol=1e-3)


def test_identity_flow_gives_the_gaussian_density():
    # Freshly built couplings are identities (zero last layers): the density is the standard normal's.
    vec = flows.RealNVP((3,), num_scales=1, couplings_per_scale=4, hidden=8)
    vec.build()
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    np.testing.assert_allclose(vec.log_prob(x), norm.logpdf(x).sum(1), rtol=1e-5)
    # For images the logit transform is the only non-identity step: change of variables by hand.
    img = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=2, hidden=4)
    img.build()
    y = _images((4, 4, 1)).astype("float64")
    s = 0.05 + 0.9 * y
    z = np.log(s / (1 - s))
    expected = (norm.logpdf(z) + np.log(0.9 / (s * (1 - s)))).reshape(len(y), -1).sum(1)
    np.testing.assert_allclose(img.log_prob(y.astype("float32")), expected, atol=1e-4)


def test_masks_alternate_and_cover_every_entry():
    a, b = flows.checkerboard_mask((4, 6, 2), 0), flows.checkerboard_mask((4, 6, 2), 1)
    assert a.shape == (4, 6, 1)
    np.testing.assert_array_equal(a + b, np.ones_like(a))
    assert np.all(a[1:, :, 0] != a[:-1, :, 0]) and np.all(a[:, 1:, 0] != a[:, :-1, 0])  # neighbours differ
    assert a.sum() == 12
    c0, c1 = flows.channel_mask((3, 3, 4), 0), flows.channel_mask((3, 3, 4), 1)
    np.testing.assert_array_equal(c0.ravel(), [1, 1, 0, 0])
    np.testing.assert_array_equal(c1.ravel(), [0, 0, 1, 1])
    np.testing.assert_array_equal(flows.checkerboard_mask((5,), 0), [1, 0, 1, 0, 1])
    model = flows.RealNVP((8, 8, 1), num_scales=2, couplings_per_scale=3, hidden=4)
    model.build()
    couplings = [layer for layer in model.flow_layers if isinstance(layer, flows.AffineCoupling)]
    for first, second in zip(couplings, couplings[1:]):
        if first.mask_type == second.mask_type:  # within a group, consecutive masks are complements
            np.testing.assert_array_equal(first.mask + second.mask, np.ones_like(first.mask))
    assert [c.mask_type for c in couplings] == ["checkerboard"] * 3 + ["channel"] * 3 + ["checkerboard"] * 3


def test_coupling_keeps_the_masked_entries_and_transforms_the_others():
    layer = _built(flows.AffineCoupling("checkerboard", 0, hidden=6), (4, 4, 1))
    _randomise(layer)
    x = _images()
    y = keras.ops.convert_to_numpy(layer.transform(x)[0])
    kept = layer.mask.astype(bool)[None].repeat(len(x), 0)
    np.testing.assert_array_equal(y[kept], x[kept])
    assert np.abs(y[~kept] - x[~kept]).min() > 0


def test_data_dependent_initialisation_standardises_the_logits():
    model = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=1, hidden=4, seed=0)
    q = np.random.default_rng(0).integers(0, 200, size=(512, 4, 4, 1)) + np.arange(16).reshape(1, 4, 4, 1)
    model.initialize(q)
    h = model.logit.transform(model.dequantize(q))[0]
    h = keras.ops.convert_to_numpy(model.normalize.transform(h)[0])
    np.testing.assert_allclose(h.mean(0), 0.0, atol=0.2)  # a new noise draw: close, not exact
    np.testing.assert_allclose(h.std(0), 1.0, atol=0.2)


def test_squeeze_round_trip_and_layout():
    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    s = keras.ops.convert_to_numpy(flows.squeeze(x))
    assert s.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(s[0, 0, 0, :3], x[0, 0, 0])  # a 2×2 block's pixels become channels
    np.testing.assert_array_equal(s[0, 0, 0, 3:6], x[0, 0, 1])
    np.testing.assert_array_equal(s[0, 0, 0, 6:9], x[0, 1, 0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(flows.unsqueeze(s)), x)


def test_dequantisation_keeps_values_in_their_bins():
    levels = 256
    deq = flows.UniformDequantize(levels, seed=0)
    q = np.tile(np.arange(levels, dtype="int32"), 200).reshape(-1, 16, 16, 1)
    y = keras.ops.convert_to_numpy(deq(q))
    assert y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(y * levels).astype("int32"), q)
    frac = y * levels - q  # uniform within the bin: mean about (1 - margin) / 2
    assert abs(frac.mean() - 0.5) < 0.01 and frac.max() > 0.99
    assert deq.log_det_per_dim == pytest.approx(math.log((1 - 1e-3) / levels))


def test_bits_per_dim_follows_the_metrics_convention():
    model = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=2, hidden=4, seed=3)
    model.build()
    q = np.random.default_rng(0).integers(0, 256, size=(8, 4, 4, 1))
    nll = model.discrete_nll(q)
    # The bound: continuous NLL of y in [0, 1), converted with metrics' ``levels`` rule, plus the margin term.
    y = keras.ops.convert_to_numpy(flows.UniformDequantize(256, seed=3)(q))
    continuous = -model.log_prob(y) - 16 * math.log(1 - 1e-3)
    np.testing.assert_allclose(distributions.bits_per_dim(nll, 16),
                               distributions.bits_per_dim(continuous, 16, levels=256), rtol=1e-5)
    # A new dequantisation draw: the same bound up to noise.
    assert model.bits_per_dim(q) == pytest.approx(float(np.mean(distributions.bits_per_dim(nll, 16))), abs=0.1)


def test_training_lowers_bits_per_dim():
    rng = np.random.default_rng(0)
    q = np.clip(rng.normal(60, 10, size=(256, 4, 4, 1)), 0, 255).astype("int32")  # a narrow distribution
    model = flows.RealNVP((4, 4, 1), num_scales=1, couplings_per_scale=2, hidden=8, seed=0)  # small: quick to trace
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.bits_per_dim(q)
    hist = model.fit(q, epochs=4, batch_size=64, verbose=0).history["bits_per_dim"]
    assert hist[-1] < hist[0] and model.bits_per_dim(q) < before - 0.5


def test_samples_have_the_right_shape_range_and_seed():
    model = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=2, hidden=4)
    model.build()
    _randomise(model, scale=0.2)
    x = model.generate(6, temperature=0.7, seed=1, batch_size=3)
    assert isinstance(x, np.ndarray) and x.shape == (6, 4, 4, 1) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(x, model.generate(6, temperature=0.7, seed=1, batch_size=3))
    assert not np.array_equal(x, model.generate(6, temperature=0.7, seed=2, batch_size=3))
    vectors = flows.RealNVP((2,), num_scales=1, couplings_per_scale=2, hidden=4)
    vectors.build()
    assert vectors.generate(7, seed=0).shape == (7, 2)
    fresh = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=2, hidden=4)
    fresh.build()
    z = np.zeros((2, 16), "float32")
    np.testing.assert_allclose(fresh.decode(z), 0.5, atol=1e-6)  # identity flow: logit^-1(0) is the middle


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="even H and W"):
        flows.squeeze(np.zeros((1, 5, 4, 1), "float32"))
    with pytest.raises(ValueError, match="divisible by 4"):
        flows.unsqueeze(np.zeros((1, 2, 2, 3), "float32"))
    with pytest.raises(ValueError, match="even H and W"):
        flows.Squeeze().build((None, 7, 7, 4))
    with pytest.raises(ValueError, match="divisible by 8"):
        flows.RealNVP((28, 28, 1), num_scales=4)  # 28 -> 14 -> 7 -> cannot squeeze again
    with pytest.raises(ValueError, match="even number of channels"):
        flows.channel_mask((4, 4, 1))
    with pytest.raises(ValueError, match="mask_type"):
        flows.AffineCoupling("stripes")
    with pytest.raises(ValueError, match="parity"):
        flows.checkerboard_mask((4, 4, 1), 2)
    with pytest.raises(ValueError, match=r"\(D,\) or \(H, W, C\)"):
        flows.RealNVP((4, 4))
    with pytest.raises(ValueError, match="one scale"):
        flows.RealNVP((2,), num_scales=2)
    with pytest.raises(ValueError, match="alpha"):
        flows.LogitTransform(0.5)
    model = flows.RealNVP((4, 4, 1), num_scales=2, couplings_per_scale=1, hidden=4)
    model.build()
    with pytest.raises(ValueError, match="expected inputs"):
        model.transform(np.zeros((2, 4, 4, 2), "float32"))
    with pytest.raises(ValueError, match="z must have shape"):
        model.inverse(np.zeros((2, 15), "float32"))
    with pytest.raises(ValueError, match="integers in"):
        model.discrete_nll(np.full((1, 4, 4, 1), 256))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(2, temperature=0.0)
    for bad in ({"couplings_per_scale": True}, {"num_scales": True}, {"hidden": 0}, {"levels": 1},
                {"hidden": [4, 4, 4]}, {"num_hidden": [1, True]}, {"couplings_per_scale": "2"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            flows.RealNVP((4, 4, 1), **{"num_scales": 2, **bad})


def test_per_scale_settings_build_each_scale_as_asked():
    model = flows.RealNVP((8, 8, 1), num_scales=3, couplings_per_scale=[1, 2, 3], hidden=[4, 6, 8],
                          num_hidden=[1, 1, 2])
    model.build()
    couplings = [layer for layer in model.flow_layers if isinstance(layer, flows.AffineCoupling)]
    by_scale = {s: [c for c in couplings if c.name.startswith(f"s{s}_")] for s in range(3)}
    # Scales 0 and 1 have a checkerboard and a channel group each; the last scale only a checkerboard group.
    assert [len(by_scale[s]) for s in range(3)] == [2, 4, 3]
    assert {(c.hidden, c.num_hidden) for c in by_scale[2]} == {(8, 2)}
    assert {(c.hidden, c.num_hidden) for c in by_scale[0]} == {(4, 1)}
    config = model.get_config()
    assert config["hidden"] == [4, 6, 8] and config["couplings_per_scale"] == [1, 2, 3]
    assert flows.RealNVP((8, 8, 1), num_scales=3, hidden=[5, 5, 5]).hidden == 5  # uniform lists read as one int
    x = _images((8, 8, 1))
    z, log_det = model.transform(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.inverse(z)[0]), x, atol=1e-5)


@pytest.mark.parametrize("event_shape", [(4, 4, 1), (2,)])
def test_keras_round_trip(tmp_path, event_shape):
    images = len(event_shape) == 3  # images also round-trip per-scale settings (lists in the config)
    model = flows.RealNVP(event_shape, num_scales=2 if images else 1, couplings_per_scale=2,
                          hidden=[6, 8] if images else 6, num_hidden=[1, 2] if images else 2)
    model.build()
    _randomise(model, scale=0.2)
    path = tmp_path / "flow.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _images(event_shape)
    for a, b in zip(model.transform(x), loaded.transform(x)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), atol=1e-6)
    z = np.random.default_rng(1).normal(size=(3, int(np.prod(event_shape)))).astype("float32")
    np.testing.assert_allclose(loaded.decode(z), model.decode(z), atol=1e-6)
