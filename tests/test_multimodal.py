"""Dual encoder, contrastive loss, zero-shot tools and text-conditioned diffusion with guidance."""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import diffusion as dm
from genlib import metrics
from genlib import multimodal as mm
from genlib.unet import UNet


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


# ---------------------------------------------------------------------------
# The loss


def test_info_nce_equals_direct_computation():
    rng = np.random.default_rng(0)
    u, v = _unit(rng.normal(size=(5, 4))), _unit(rng.normal(size=(5, 4)))
    scale = 7.0
    logits = keras.ops.convert_to_numpy(mm.similarity_logits(u.astype("float32"), v.astype("float32"), scale))
    np.testing.assert_allclose(logits, scale * u @ v.T, rtol=1e-5, atol=1e-5)
    direct = 0.0
    for i in range(5):
        direct -= np.log(np.exp(logits[i, i]) / np.exp(logits[i]).sum()) / 10  # image i picks caption i
        direct -= np.log(np.exp(logits[i, i]) / np.exp(logits[:, i]).sum()) / 10  # caption i picks image i
    assert float(mm.info_nce(logits)) == pytest.approx(direct, rel=1e-5)


def test_info_nce_is_minimal_for_aligned_pairs():
    u = np.eye(6, dtype="float32")  # six orthogonal unit vectors
    aligned = float(mm.info_nce(mm.similarity_logits(u, u, 10.0)))
    rng = np.random.default_rng(1)
    for _ in range(5):  # any other pairing of the same captions costs more
        perm = rng.permutation(6)
        if (perm == np.arange(6)).all():
            continue
        assert float(mm.info_nce(mm.similarity_logits(u, u[perm], 10.0))) > aligned
    for _ in range(5):
        v = _unit(rng.normal(size=(6, 6))).astype("float32")
        assert float(mm.info_nce(mm.similarity_logits(u, v, 10.0))) > aligned
    # Perfect alignment with a sharp softmax drives the loss to 0; chance level is log B.
    assert float(mm.info_nce(mm.similarity_logits(u, u, 100.0))) < 1e-6
    assert float(mm.info_nce(np.zeros((6, 6), "float32"))) == pytest.approx(np.log(6), rel=1e-5)


def test_similarity_rows_are_softmax_normalised():
    rng = np.random.default_rng(2)
    u, v = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(7, 3)))
    p = mm.softmax_similarity(u, v, 20.0)
    assert p.shape == (4, 7) and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.log(p), _log_softmax(20.0 * u @ v.T, axis=1), atol=1e-10)


def test_recall_at_k():
    s = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])
    # Query 0 ranks its match first; query 1 second; query 2 third.
    assert mm.recall_at_k(s, 1) == pytest.approx(1 / 3)
    assert mm.recall_at_k(s, 2) == pytest.approx(2 / 3)
    assert mm.recall_at_k(s, 3) == 1.0
    assert mm.recall_at_k(np.eye(10), 1) == 1.0
    with pytest.raises(ValueError, match="square"):
        mm.recall_at_k(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        mm.recall_at_k(np.eye(2), 0)


# ---------------------------------------------------------------------------
# The encoders


def _dual(**kw):
    model = mm.DualEncoder(vocab_size=20, max_length=8, embed_dim=16, text_width=16, num_heads=2,
                           image_filters=(8, 16), image_width=32, **kw)
    model.build([(None, 16, 16, 1), (None, 8)])
    return model


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(n, 16, 16, 1)).astype("float32")
    ids = np.zeros((n, 8), "int32")
    for i in range(n):
        length = 2 + i % 5
        ids[i, :length] = rng.integers(2, 20, length)
        ids[i, length] = 1  # EOS
    return images, ids


def test_text_encoder_reads_eos_and_ignores_padding():
    enc = mm.TextEncoder(vocab_size=20, max_length=8, width=16, num_heads=2)
    _, ids = _batch()
    out = keras.ops.convert_to_numpy(enc(ids))
    assert out.shape == (6, 16)
    noisy = ids.copy()
    for i in range(len(ids)):
        eos = int(np.argmax(ids[i] == 1))
        noisy[i, eos + 1:] = 7  # garbage after EOS: unseen under the causal mask
    np.testing.assert_allclose(keras.ops.convert_to_numpy(enc(noisy)), out, atol=1e-5)
    changed = ids.copy()
    changed[:, 0] = np.where(changed[:, 0] == 3, 4, 3)  # a different first word changes the vector
    assert np.abs(keras.ops.convert_to_numpy(enc(changed)) - out).max() > 1e-4


def test_token_features_and_mask():
    """Per-token features: the mask keeps the words and the first EOS; the EOS row is the pooled read-out."""
    model = _dual()
    _, ids = _batch()
    h, mask = mm.embed_tokens(model, ids, batch_size=4)
    assert h.shape == (6, 8, 16) and mask.shape == (6, 8) and mask.dtype == bool
    for i in range(6):
        eos = int(np.argmax(ids[i] == 1))
        np.testing.assert_array_equal(mask[i], np.arange(8) <= eos)
        # The caption vector is the EOS position's feature, projected and normalised.
        pooled = keras.ops.convert_to_numpy(model.text_encoder(ids[i: i + 1]))[0]
        np.testing.assert_allclose(h[i, eos], pooled, atol=1e-5)
    noisy = ids.copy()
    noisy[mask == 0] = 7  # garbage in the padding: the unmasked features do not change (causal attention)
    h2, mask2 = mm.embed_tokens(model, noisy)
    np.testing.assert_array_equal(mask2[:, :3], mask[:, :3])
    np.testing.assert_allclose(h2[mask], h[mask], atol=1e-5)


def test_clip_score_is_higher_for_matched_than_shuffled_pairs():
    model = _dual()
    images, ids = _batch(16, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    v0 = mm.embed_text(model, ids)
    untrained_gap = metrics.clip_score(model, images, v0).mean() - metrics.clip_score(
        model, images, v0[np.roll(np.arange(16), 1)]).mean()
    model.fit((images, ids), epochs=30, batch_size=16, verbose=0)
    v = mm.embed_text(model, ids)
    matched = metrics.clip_score(model, images, v)
    shuffled = metrics.clip_score(model, images, v[np.roll(np.arange(16), 1)])
    assert matched.shape == (16,) and np.all(np.abs(matched) <= 1 + 1e-5)
    assert matched.mean() > shuffled.mean() + 0.3 > untrained_gap + 0.2, (matched.mean(), shuffled.mean())


def test_dual_encoder_outputs_unit_vectors_and_learns():
    model = _dual()
    images, ids = _batch(16, seed=1)
    u, v = model((images, ids))
    np.testing.assert_allclose(np.linalg.norm(keras.ops.convert_to_numpy(u), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(keras.ops.convert_to_numpy(v), axis=1), 1.0, rtol=1e-5)
    assert float(ops.convert_to_numpy(model.logit_scale)) == pytest.approx(1 / 0.07, rel=1e-5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit((images, ids), epochs=30, batch_size=16, verbose=0).history
    assert hist["loss"][-1] < 0.5 * hist["loss"][0], hist["loss"]  # 16 random pairs can be memorised
    assert hist["accuracy"][-1] > 0.8


def test_zero_shot_classify_shapes_and_ensembles():
    model = _dual()
    images, ids = _batch(6)
    u, v = (keras.ops.convert_to_numpy(a) for a in model((images, ids)))
    pred = mm.zero_shot_classify(model, images, ids[:3])
    np.testing.assert_array_equal(pred, np.argmax(u @ v[:3].T, axis=1))
    ensemble = mm.zero_shot_classify(model, images, np.stack([ids[:3], ids[3:]], axis=1))  # 3 classes, 2 prompts
    mean = _unit(v[:3] + v[3:])
    np.testing.assert_array_equal(ensemble, np.argmax(u @ mean.T, axis=1))
    with pytest.raises(ValueError, match="prompt_ids"):
        mm.zero_shot_classify(model, images, ids[0])
    scores = metrics.clip_score(model, images, v)
    np.testing.assert_allclose(scores, np.sum(u * v, axis=1), atol=1e-5)


def test_dual_encoder_round_trip(tmp_path):
    model = _dual()
    images, ids = _batch()
    before = [keras.ops.convert_to_numpy(a) for a in model((images, ids))]
    path = tmp_path / "dual.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = [keras.ops.convert_to_numpy(a) for a in loaded((images, ids))]
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-6)
    scales = [float(ops.convert_to_numpy(m.logit_scale)) for m in (loaded, model)]
    assert scales[0] == pytest.approx(scales[1])


def test_encoder_bad_arguments():
    with pytest.raises(ValueError, match="must divide width"):
        mm.TextEncoder(vocab_size=10, width=10, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        mm.TextEncoder(vocab_size=0)
    with pytest.raises(ValueError, match="token ids"):
        mm.TextEncoder(vocab_size=10, width=8, num_heads=2).build((4, 8, 3))
    with pytest.raises(ValueError, match="images"):
        mm.ImageEncoder().build((4, 16, 16))
    with pytest.raises(ValueError, match="filters"):
        mm.ImageEncoder(filters=())
    with pytest.raises(ValueError, match="init_temperature"):
        mm.DualEncoder(vocab_size=10, init_temperature=0.0)
    with pytest.raises(ValueError, match=r"\(images, token_ids\)"):
        _dual()(np.zeros((2, 16, 16, 1), "float32"))


# ---------------------------------------------------------------------------
# Text-conditioned diffusion with classifier-free guidance


@pytest.fixture(scope="module")
def text_diffusion():
    model = dm.DiffusionModel(image_shape=(8, 8, 1), widths=(8, 16), attention=False, groups=4, timesteps=20,
                              condition_dim=6, seed=0)
    model.build()
    # Non-zero weights everywhere (the output conv starts at zero), so conditions make a difference.
    rng = np.random.default_rng(0)
    for w in model.network.weights:
        w.assign(rng.normal(scale=0.2, size=w.shape).astype("float32"))
    model.update_ema()
    for e, w in zip(model.ema_network.weights, model.network.weights):
        e.assign(w)
    return model


def test_guidance_zero_is_unconditional_and_one_is_conditional(text_diffusion):
    m = text_diffusion
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    t = np.array([0, 7, 19], "int32")
    c = _unit(rng.normal(size=(3, 6))).astype("float32")
    net = m.ema_network
    uncond = keras.ops.convert_to_numpy(net(x, t))
    null = keras.ops.convert_to_numpy(net(x, t, np.zeros_like(c)))
    cond = keras.ops.convert_to_numpy(net(x, t, c))
    np.testing.assert_allclose(uncond, null, atol=1e-6)  # no condition = the zero vector
    assert np.abs(cond - uncond).max() > 1e-3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m.predict_noise(x, t, c, guidance=0.0)), uncond, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m.predict_noise(x, t, c, guidance=1.0)), cond, atol=1e-5)
    w3 = keras.ops.convert_to_numpy(m.predict_noise(x, t, c, guidance=3.0))
    np.testing.assert_allclose(w3, uncond + 3.0 * (cond - uncond), atol=1e-4)


def test_condition_dropout_gives_the_null_condition(text_diffusion):
    m = text_diffusion
    x0 = np.zeros((4, 8, 8, 1), "float32")
    c = np.ones((4, 6), "float32")
    m.label_dropout = 1.0
    state = keras.ops.convert_to_numpy(m.noise_seed.state.value)
    try:
        eps_pred, _ = m((x0, c), training=True)  # every caption dropped
        m.noise_seed.state.assign(state)  # the same t and noise again
        eps_null, _ = m((x0, np.zeros_like(c)), training=False)
    finally:
        m.label_dropout = 0.1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(eps_pred), keras.ops.convert_to_numpy(eps_null), atol=1e-5)


def test_text_to_image_samples_and_fit(text_diffusion):
    c = _unit(np.random.default_rng(2).normal(size=(3, 6))).astype("float32")
    out = mm.text_to_image(text_diffusion, c, guidance=2.0, steps=3, seed=0)
    assert out.shape == (3, 8, 8, 1) and np.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    np.testing.assert_array_equal(out, mm.text_to_image(text_diffusion, c, guidance=2.0, steps=3, seed=0))
    # The training loss runs with condition vectors (and their dropout).
    loss = text_diffusion.compute_loss(x=(np.zeros((4, 8, 8, 1), "float32"), np.ones((4, 6), "float32")))
    assert np.isfinite(float(ops.convert_to_numpy(loss)))
    # fit(images, conditions) trains and moves the EMA, on every backend.
    model = dm.DiffusionModel(image_shape=(8, 8, 1), widths=(8,), attention=False, groups=4, timesteps=10,
                              condition_dim=6, seed=0)
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = np.random.default_rng(3).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    history = model.fit(x, np.ones((16, 6), "float32"), epochs=1, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][-1]) and float(keras.ops.convert_to_numpy(model.ema_updates)) == 2


def test_text_diffusion_round_trip(tmp_path, text_diffusion):
    path = tmp_path / "t2i.keras"
    text_diffusion.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.condition_dim == 6 and loaded.network.condition_dim == 6
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 8, 1)).astype("float32")
    t, c = np.array([3, 9], "int32"), rng.normal(size=(2, 6)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.predict_noise(x, t, c, guidance=2.5)),
                               keras.ops.convert_to_numpy(text_diffusion.predict_noise(x, t, c, guidance=2.5)),
                               atol=1e-5)


def test_text_diffusion_bad_arguments(text_diffusion):
    with pytest.raises(ValueError, match="at most one"):
        UNet(widths=(8,), groups=4, num_classes=3, condition_dim=4)
    with pytest.raises(ValueError, match="condition_dim must be an int >= 1"):
        UNet(widths=(8,), groups=4, condition_dim=0)
    with pytest.raises(ValueError, match=r"conditions must be shaped \(n, 6\)"):
        text_diffusion.generate(2, steps=2, labels=np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        text_diffusion.generate(2, steps=2, labels=np.zeros((3, 6), "float32"))
    plain = dm.DiffusionModel(image_shape=(8, 8, 1), widths=(8,), attention=False, groups=4, timesteps=10)
    with pytest.raises(ValueError, match="condition_dim"):
        mm.text_to_image(plain, np.zeros((2, 6), "float32"))
    with pytest.raises(ValueError, match="one text embedding per image"):
        metrics.clip_score(_dual(), np.zeros((2, 16, 16, 1), "float32"), np.zeros((3, 16), "float32"))
    with pytest.raises(ValueError, match="encode_images"):
        metrics.clip_score(object(), np.zeros((2, 16, 16, 1), "float32"), np.zeros((2, 16), "float32"))
    with pytest.raises(ValueError, match="ids must be"):
        mm.embed_tokens(_dual(), np.zeros(8, "int32"))
    assert ops.shape(mm.l2_normalize(np.ones((2, 3), "float32"))) == (2, 3)
