"""Tests of genlib.unet's cross-attention: masked padding changes nothing, the null context is the
identity, the block matches attention written out in NumPy, the U-Net without context is unchanged."""

import keras  # noqa: I001
import numpy as np
import pytest

from genlib.unet import CrossAttention, UNet


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _randomise(layer, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(scale=scale, size=w.shape).astype("float32"))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 4, 4, 8)).astype("float32")
    context = rng.normal(size=(3, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    return x, context, mask


def test_cross_attention_matches_numpy_and_ignores_padding():
    x, context, mask = _inputs()
    block = CrossAttention(num_heads=2, groups=4)
    y0 = _np(block(x, context, mask))
    np.testing.assert_allclose(y0, x, atol=1e-6)  # zero-initialised output: the identity
    _randomise(block)
    y, weights = block(x, context, mask, return_attention=True)
    y, weights = _np(y), _np(weights)
    # The same attention written out, per head, over the unmasked tokens only.
    norm = _np(block.norm(x)).reshape(3, 16, 8)
    wq, wk, wv = (_np(layer.kernel) for layer in (block.query, block.key, block.value))
    wo, bo = _np(block.out.kernel), _np(block.out.bias)
    expected = np.empty((3, 16, 8), "float64")
    for b in range(3):
        keep = mask[b]
        heads = []
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            q, k, v = norm[b] @ wq[:, cols], context[b, keep] @ wk[:, cols], context[b, keep] @ wv[:, cols]
            logits = q @ k.T / 2.0
            a = np.exp(logits - logits.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            np.testing.assert_allclose(weights[b, h][:, keep], a, rtol=1e-4, atol=1e-6)
            assert np.all(weights[b, h][:, ~keep] == 0)
            heads.append(a @ v)
        expected[b] = x[b].reshape(16, 8) + np.concatenate(heads, axis=1) @ wo + bo
    np.testing.assert_allclose(y, expected.reshape(3, 4, 4, 8), rtol=1e-4, atol=1e-4)
    # Changing the padded tokens changes nothing, exactly; changing a kept token does change the output.
    garbage = context.copy()
    garbage[~mask] = 1e3
    np.testing.assert_array_equal(_np(block(x, garbage, mask)), y)
    changed = context.copy()
    changed[:, 0] += 1.0
    assert np.abs(_np(block(x, changed, mask)) - y).max() > 1e-3


def test_null_context_is_the_identity_and_unet_without_context_is_unchanged():
    x, context, mask = _inputs(1)
    block = CrossAttention(num_heads=1, groups=4)
    block(x, context, mask)
    _randomise(block, seed=1)
    np.testing.assert_array_equal(_np(block(x, context, np.zeros_like(mask))), x)
    # The U-Net: no context and the all-padding context give the same output; a real context another.
    net = UNet(widths=(8, 16), groups=4, attention=False, context_dim=6, context_heads=2, image_channels=8)
    net.build((None, 4, 4, 8))
    _randomise(net, seed=2, scale=0.2)
    t = np.array([1, 5, 9], "int32")
    none = _np(net(x, t))
    null = _np(net(x, t, net.null_condition((context, mask))))
    np.testing.assert_allclose(null, none, atol=1e-6)
    assert np.abs(_np(net(x, t, (context, mask))) - none).max() > 1e-3
    garbage = context.copy()
    garbage[~mask] = -50.0
    np.testing.assert_allclose(_np(net(x, t, (garbage, mask))), _np(net(x, t, (context, mask))), atol=1e-6)
    dropped = net.drop_condition((context, mask), np.array([True, False, False]))
    np.testing.assert_array_equal(_np(dropped[1]), mask & np.array([[False], [True], [True]]))
    # Without context_dim the U-Net has exactly the weights it always had (old checkpoints load).
    plain = UNet(widths=(8, 16), groups=4, attention=False, image_channels=8)
    plain.build((None, 4, 4, 8))
    assert not any("cross" in w.path for w in plain.weights)
    assert len(net.weights) == len(plain.weights) + 7 * len(net.cross)  # norm (2), q, k, v, out (2)


def test_round_trip(tmp_path):
    x, context, mask = _inputs(2)
    inputs = keras.Input((4, 4, 8))
    ctx, msk = keras.Input((5, 6)), keras.Input((5,), dtype="bool")
    model = keras.Model([inputs, ctx, msk], CrossAttention(2, 4, name="cross")(inputs, ctx, msk))
    _randomise(model, seed=3)
    path = tmp_path / "cross.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded([x, context, mask])), _np(model([x, context, mask])), atol=1e-6)
    net = UNet(widths=(8,), groups=4, attention=False, context_dim=6, name="unet")
    config = net.get_config()
    assert config["context_dim"] == 6 and UNet.from_config(config).context_dim == 6


def test_bad_arguments():
    x, context, mask = _inputs()
    with pytest.raises(ValueError, match="num_heads"):
        CrossAttention(num_heads=3, groups=4)(x, context, mask)
    with pytest.raises(ValueError, match="context"):
        CrossAttention(num_heads=1, groups=4)(x, context[0], mask)
    with pytest.raises(ValueError, match="at most one"):
        UNet(widths=(8,), groups=4, condition_dim=4, context_dim=4)
    with pytest.raises(ValueError, match="context_heads"):
        UNet(widths=(8, 12), groups=4, context_dim=4, context_heads=8)
    net = UNet(widths=(8,), groups=4, attention=False, context_dim=6, image_channels=8)
    net.build((None, 4, 4, 8))
    with pytest.raises(ValueError, match="labels = \\(context"):
        net(x, np.zeros(3, "int32"), context)
    with pytest.raises(ValueError, match="context must be"):
        net(x, np.zeros(3, "int32"), (context[..., :4], mask))
