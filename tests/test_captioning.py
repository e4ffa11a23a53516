"""The Flamingo-style captioner: gated cross-attention, the resampler, the frozen GPT it steers."""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import captioning as cap
from genlib import multimodal as mm
from genlib.transformer import GPT

VOCAB, LENGTH, WIDTH = 12, 8, 16


def _parts(seed=0):
    keras.utils.set_random_seed(seed)
    gpt = GPT(VOCAB, LENGTH, width=WIDTH, depth=2, num_heads=2)
    gpt.build((None, LENGTH))
    encoder = mm.ImageEncoder(filters=(4, 8), width=8)
    encoder.build((None, 8, 8, 1))
    return gpt, encoder


def _data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, VOCAB, size=(n, LENGTH)).astype("int32")


def _open_gates(model, value=0.7):
    for layer in model.cross_layers:
        layer.attention_gate.assign(value)
        layer.mlp_gate.assign(-value)


@pytest.mark.parametrize("num_latents", [None, 3])
def test_closed_gates_return_the_frozen_gpt_logits_exactly(num_latents):
    gpt, encoder = _parts()
    model = cap.Captioner(gpt, encoder, image_shape=(8, 8, 1), num_heads=2, num_latents=num_latents)
    model.build()
    images, ids = _data()
    np.testing.assert_array_equal(ops.convert_to_numpy(model((images, ids))), ops.convert_to_numpy(gpt(ids)))
    # The images matter once a gate opens (so the equality above is not vacuous).
    _open_gates(model)
    assert not np.allclose(ops.convert_to_numpy(model((images, ids))), ops.convert_to_numpy(gpt(ids)), atol=1e-4)


def test_gated_cross_attention_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    x, visual = rng.normal(size=(2, 3, 8)).astype("float32"), rng.normal(size=(2, 5, 8)).astype("float32")
    layer = cap.GatedCrossAttention(num_heads=2, mlp_ratio=2)
    layer.build(x.shape)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x, visual)), x)  # gates closed: the identity
    layer.attention_gate.assign(0.4)
    layer.mlp_gate.assign(0.0)
    w_q, w_k, w_v, w_o = (ops.convert_to_numpy(w) for w in (layer.w_q, layer.w_k, layer.w_v, layer.w_o))
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)  # LN at its initial scale/shift
    q, k, v = h @ w_q, visual @ w_k, visual @ w_v
    out = np.zeros_like(x)
    for head in range(2):
        cols = slice(4 * head, 4 * head + 4)
        s = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / 2.0
        a = np.exp(s - s.max(-1, keepdims=True))
        out[..., cols] = (a / a.sum(-1, keepdims=True)) @ v[..., cols]
    expected = x + np.tanh(0.4) * out @ w_o
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x, visual)), expected, rtol=1e-4, atol=1e-5)


def test_only_the_bridge_trains_and_the_loss_falls():
    gpt, encoder = _parts()
    frozen = [ops.convert_to_numpy(w).copy() for w in gpt.weights + encoder.weights]
    model = cap.Captioner(gpt, encoder, image_shape=(8, 8, 1), num_heads=2)
    model.build()
    assert all(id(w) not in {id(v) for v in model.trainable_weights} for w in gpt.weights + encoder.weights)
    # Captions that depend on the image: the sign of its mean picks one of two fixed captions.
    rng = np.random.default_rng(2)
    images = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    sign = images.mean(axis=(1, 2, 3)) > 0
    images += np.where(sign, 1.0, -1.0)[:, None, None, None]
    captions = np.where(sign[:, None], [[3, 4, 5, 1, 0, 0, 0, 0]], [[6, 7, 8, 1, 0, 0, 0, 0]]).astype("int32")
    x_ids, y_ids = cap.caption_inputs(captions)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    first = model.evaluate((images, x_ids), y_ids, verbose=0, return_dict=True)["loss"]
    model.fit((images, x_ids), y_ids, epochs=15, batch_size=32, verbose=0)
    last = model.evaluate((images, x_ids), y_ids, verbose=0, return_dict=True)["loss"]
    assert last < 0.5 * first, (first, last)
    assert any(abs(g) > 1e-3 for pair in model.gates().values() for g in pair)
    for before, w in zip(frozen, gpt.weights + encoder.weights):
        np.testing.assert_array_equal(before, ops.convert_to_numpy(w))
    out = model.generate(images=images[:16])
    assert out.shape == (16, LENGTH) and out.dtype == np.int32
    # The frozen LM was never trained: only the cross-attention tells it which caption to start.
    np.testing.assert_array_equal(out[:, 0], captions[:16, 0])


def test_caption_inputs_shift_right():
    x, y = cap.caption_inputs(np.array([[5, 6, 1, 0]]))
    np.testing.assert_array_equal(x, [[0, 5, 6, 1]])
    np.testing.assert_array_equal(y, [[5, 6, 1, 0]])


def test_pad_after_eos():
    np.testing.assert_array_equal(cap.pad_after_eos([[5, 1, 6, 1], [5, 6, 7, 8]]), [[5, 1, 0, 0], [5, 6, 7, 8]])


def test_generate_pads_after_eos_and_is_seeded():
    gpt, encoder = _parts()
    model = cap.Captioner(gpt, encoder, image_shape=(8, 8, 1), num_heads=2)
    model.build()
    _open_gates(model)
    images, _ = _data(5)
    a = model.generate(images=images, temperature=1.0, seed=3, batch_size=2)
    b = model.generate(5, images=images, temperature=1.0, seed=3)
    np.testing.assert_array_equal(a, b)
    for row in a:
        eos = np.flatnonzero(row == 1)
        if len(eos):
            assert (row[eos[0] + 1:] == 0).all()


def test_round_trip(tmp_path):
    gpt, encoder = _parts()
    model = cap.Captioner(gpt, encoder, image_shape=(8, 8, 1), num_heads=2, num_latents=2)
    model.build()
    _open_gates(model)
    images, ids = _data()
    path = tmp_path / "captioner.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded((images, ids))), ops.convert_to_numpy(model((images, ids))),
                               rtol=1e-5, atol=1e-5)
    assert not loaded.language_model.trainable and loaded.gates() == model.gates()


def test_bad_arguments():
    gpt, encoder = _parts()
    with pytest.raises(ValueError, match="genlib GPT"):
        cap.Captioner(encoder, encoder)
    with pytest.raises(ValueError, match="ImageEncoder"):
        cap.Captioner(gpt, gpt)
    with pytest.raises(ValueError, match="num_heads"):
        cap.Captioner(gpt, encoder, num_heads=3)
    with pytest.raises(ValueError, match="every"):
        cap.Captioner(gpt, encoder, every=0)
    model = cap.Captioner(gpt, encoder, image_shape=(8, 8, 1), num_heads=2)
    model.build()
    with pytest.raises(ValueError, match="images"):
        model.generate(3)
    with pytest.raises(ValueError, match="images must be"):
        model.visual_tokens(np.zeros((2, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match="length"):
        model.generate(images=_data(2)[0], length=LENGTH + 1)
    with pytest.raises(ValueError, match="visual must be"):
        model.cross_layers[0](np.zeros((1, 2, WIDTH), "float32"), np.zeros((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match="caption_ids"):
        cap.caption_inputs(np.zeros(4))
