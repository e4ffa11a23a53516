"""Tests for genlib.sentence_vae: encoder masking and order, the injections, the KL terms, decoding, saving."""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import sentence_vae as sv
from genlib import vae
from genlib._util import value_and_grad
from genlib.transformer import GPT

VOCAB, LENGTH, LATENT = 13, 8, 4


def sentences(n=6, seed=0):
    """Sentences in WordVocab's layout: 2..6 words (ids >= 2), EOS, then padding."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, LENGTH), "int32")
    for row in out:
        k = rng.integers(2, LENGTH - 1)
        row[:k] = rng.integers(2, VOCAB, k)
        row[k] = sv.EOS
    return out


def small_gpt(seed=0):
    keras.utils.set_random_seed(seed)
    gpt = GPT(VOCAB, LENGTH, width=16, depth=2, num_heads=2)
    gpt.build((None, LENGTH))
    return gpt


def small_vae(injection="memory", gpt=None, **kwargs):
    encoder = sv.SentenceEncoder(VOCAB, LENGTH, latent_dim=LATENT, width=16, depth=1, num_heads=2)
    model = sv.SentenceVAE(encoder, gpt or small_gpt(), injection=injection, seed=0, **kwargs)
    model.build((None, LENGTH))
    return model


def numpy(x):
    return ops.convert_to_numpy(x)


# --- the decoder and the two injections ----------------------------------------------------------


def test_zero_code_with_embedding_injection_is_the_plain_gpt():
    gpt = small_gpt()
    x = sentences()
    inputs = sv.decoder_inputs(x)
    plain = numpy(gpt(inputs))
    model = small_vae("embedding", gpt=sv.copy_gpt(gpt))
    z = np.zeros((len(x), LATENT), "float32")
    np.testing.assert_array_equal(numpy(model.decoder_logits(z, inputs)), plain)
    # ...and a non-zero code changes it (the test can fail).
    z1 = np.random.default_rng(1).normal(size=z.shape).astype("float32")
    assert np.abs(numpy(model.decoder_logits(z1, inputs)) - plain).max() > 1e-4


def test_memory_injection_without_memory_is_the_plain_gpt_and_with_it_differs():
    gpt = small_gpt()
    model = small_vae("memory", gpt=sv.copy_gpt(gpt))
    inputs = sv.decoder_inputs(sentences())
    plain = numpy(gpt(inputs))
    # The fine-tuned decoder is still a GPT: with the memory absent it is the pretrained model exactly.
    np.testing.assert_array_equal(numpy(model.decoder(inputs)), plain)
    z = np.random.default_rng(1).normal(size=(6, LATENT)).astype("float32")
    with_z = numpy(model.decoder_logits(z, inputs))
    assert np.abs(with_z - plain).max() > 1e-4
    # Different codes, different predictions, for every position (the memory is seen from token 0 on).
    other = numpy(model.decoder_logits(-z, inputs))
    assert (np.abs(with_z - other).max(axis=-1) > 1e-6).all()


def test_copy_gpt_copies_weights_not_references():
    gpt = small_gpt()
    twin = sv.copy_gpt(gpt)
    x = sv.decoder_inputs(sentences())
    np.testing.assert_array_equal(numpy(twin(x)), numpy(gpt(x)))
    twin.head.kernel.assign(twin.head.kernel * 2.0)
    assert np.abs(numpy(twin(x)) - numpy(gpt(x))).max() > 1e-4


def test_decoder_inputs_and_token_nll():
    x = sentences(4)
    inputs = numpy(sv.decoder_inputs(x))
    np.testing.assert_array_equal(inputs[:, 0], sv.BOS)
    np.testing.assert_array_equal(inputs[:, 1:], x[:, :-1])
    logits = np.random.default_rng(2).normal(size=(4, LENGTH, VOCAB)).astype("float32")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [-sum(log_p[b, t, x[b, t]] for t in range(LENGTH) if x[b, t] != sv.PAD) for b in range(4)]
    np.testing.assert_allclose(numpy(sv.token_nll(logits, x)), expected, rtol=1e-5)
    gpt = small_gpt()
    np.testing.assert_allclose(sv.language_model_nll(gpt, x, batch_size=3),
                               numpy(sv.token_nll(gpt(sv.decoder_inputs(x)), x)), rtol=1e-5)
    assert sv.language_model_features(gpt, x).shape == (4, 16)


# --- the encoder ------------------------------------------------------------------------------------


def test_encoder_is_order_aware_and_ignores_padding():
    keras.utils.set_random_seed(0)
    long = 12
    encoder = sv.SentenceEncoder(VOCAB, long, latent_dim=LATENT, width=16, depth=2, num_heads=2)
    encoder.build((None, long))
    # Random weights in the log-variance head, so both heads are checked.
    encoder.log_var_head.kernel.assign(np.random.default_rng(0).normal(size=(16, LATENT)).astype("float32"))
    x = sentences(3)
    padded = np.zeros((3, long), "int32")
    padded[:, :LENGTH] = x
    short, wide = (np.concatenate([numpy(t) for t in encoder(v)], axis=1) for v in (x, padded))
    np.testing.assert_allclose(short, wide, atol=1e-5)  # 4 more padding tokens change nothing
    # Swapping two words changes the code: positions matter, not just the bag of words.
    swapped = x.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert (x[:, 0] != x[:, 1]).any()
    changed = np.concatenate([numpy(t) for t in encoder(swapped)], axis=1)
    rows = x[:, 0] != x[:, 1]
    assert (np.abs(changed - short).max(axis=1)[rows] > 1e-5).all()


def test_padding_keys_get_no_attention():
    keras.utils.set_random_seed(0)
    attention = sv.BidirectionalSelfAttention(2)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    _, weights = attention(x, padding_mask=mask, return_attention=True)
    weights = numpy(weights)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(weights[0, :, :, 3:], 0.0)
    assert (weights[1] > 0).all() and (weights[0, :, :, :3] > 0).all()  # not causal: later words are seen


# --- the KL terms ---------------------------------------------------------------------------------------


def test_free_bits_kl_matches_the_vae_penalty_and_floors_the_gradient():
    rng = np.random.default_rng(0)
    z_mean = rng.normal(size=(32, 5)).astype("float32") * np.array([0.01, 0.01, 2.0, 3.0, 0.01], "float32")
    z_log_var = np.zeros((32, 5), "float32")
    kl = vae.gaussian_kl(z_mean, z_log_var)
    per_unit = numpy(kl).mean(0)
    np.testing.assert_allclose(float(sv.free_bits_kl(kl)), numpy(kl).sum(-1).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(sv.free_bits_kl(kl, 0.5)), np.maximum(per_unit, 0.5).sum(), rtol=1e-5)
    # Units under the floor get no gradient; units above it get the plain KL's gradient.
    mu, log_var = keras.Variable(z_mean), ops.convert_to_tensor(z_log_var)
    _, _, (grad,) = value_and_grad(lambda: sv.free_bits_kl(vae.gaussian_kl(mu.value, log_var), 0.5), [mu])
    grad = numpy(grad)
    below = per_unit < 0.5
    assert below[[0, 1, 4]].all() and not below[[2, 3]].any()
    np.testing.assert_array_equal(grad[:, below], 0.0)
    np.testing.assert_allclose(grad[:, ~below], z_mean[:, ~below] / 32, rtol=1e-5)


def test_loss_is_reconstruction_plus_floored_kl_and_metrics_are_tracked():
    model = small_vae(beta=0.5, free_bits=2.0)
    model.compile(optimizer="adam")
    x = sentences(8)
    out = model(x)
    loss = float(numpy(model.compute_loss(x, y_pred=out, training=False)))
    rec = numpy(sv.token_nll(out["logits"], x)).mean()
    per_unit = numpy(vae.gaussian_kl(out["z_mean"], out["z_log_var"])).mean(0)
    assert (per_unit < 2.0).any()  # some units sit on the floor (the test can tell floored from plain KL)
    assert loss == pytest.approx(rec + 0.5 * np.maximum(per_unit, 2.0).sum(), rel=1e-5)
    assert [m.name for m in model.metrics] == ["loss", "reconstruction", "kl", "active_units", "beta"]


def test_active_units_counts_varying_means():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 6)) * np.array([1.0, 0.5, 0.2, 0.05, 0.0, 0.001])
    assert sv.active_units(z) == 3  # variances 1, 0.25, 0.04 exceed 0.01; 0.0025 does not
    assert sv.active_units(z, threshold=0.001) == 4
    z[:, 5] += 7.0  # a constant shift is not information
    assert sv.active_units(z) == 3
    with pytest.raises(ValueError, match="N >= 2"):
        sv.active_units(z[:1])


def test_schedule_drives_beta_and_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    schedule = vae.CyclicalBeta(1.0, cycle_steps=8, ramp_fraction=0.25, zero_fraction=0.5)
    model = small_vae("embedding", beta=schedule, free_bits=0.1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = np.tile(sentences(4), (16, 1))
    history = model.fit(x, batch_size=16, epochs=4, verbose=0).history
    assert int(numpy(model.step)) == 16
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 < np.mean(history["beta"]) < 1.0


# --- decoding, sampling, saving ---------------------------------------------------------------------------


def test_decode_greedy_is_deterministic_and_well_formed():
    model = small_vae()
    z = np.random.default_rng(0).normal(size=(5, LATENT)).astype("float32")
    a, b = model.decode(z), model.decode(z, batch_size=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, LENGTH) and a.dtype == np.int32
    for row in a:
        assert sv.PAD not in row[: (list(row).index(sv.EOS) if sv.EOS in row else LENGTH)]
        if sv.EOS in row:
            assert (row[list(row).index(sv.EOS) + 1:] == sv.PAD).all()
    s1, s2 = (model.decode(z, temperature=1.0, seed=3) for _ in range(2))
    np.testing.assert_array_equal(s1, s2)
    g1, g2 = model.generate(4, seed=1), model.generate(4, seed=1)
    np.testing.assert_array_equal(g1, g2)
    assert model.reconstruct(sentences(3)).shape == (3, LENGTH)


@pytest.mark.parametrize("injection", sv.INJECTIONS)
def test_round_trip_through_keras_file(tmp_path, injection):
    model = small_vae(injection, beta=vae.CyclicalBeta(1.0, cycle_steps=10), free_bits=0.25)
    x = sentences()
    model.step.assign(7)
    path = tmp_path / "sentence_vae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, sv.SentenceVAE) and loaded.injection == injection
    assert loaded.free_bits == 0.25 and isinstance(loaded.beta_schedule, vae.CyclicalBeta)
    assert int(numpy(loaded.step)) == 7
    for a, b in zip(model.encode(x), loaded.encode(x)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    z = model.encode(x)[0]
    np.testing.assert_allclose(model.nll(x, z), loaded.nll(x, z), rtol=1e-5)
    np.testing.assert_array_equal(model.decode(z), loaded.decode(z))


def test_bad_arguments():
    gpt = small_gpt()
    encoder = sv.SentenceEncoder(VOCAB, LENGTH, latent_dim=LATENT, width=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="injection must be one of"):
        sv.SentenceVAE(encoder, gpt, injection="prefix")
    with pytest.raises(ValueError, match="max_length"):
        sv.SentenceVAE(sv.SentenceEncoder(VOCAB, LENGTH + 2, latent_dim=LATENT, width=16), gpt)
    with pytest.raises(ValueError, match="decoder must be a genlib GPT"):
        sv.SentenceVAE(encoder, encoder)
    with pytest.raises(ValueError, match="free_bits"):
        sv.SentenceVAE(encoder, gpt, free_bits=-1.0)
    with pytest.raises(ValueError, match="num_heads must divide"):
        sv.SentenceEncoder(VOCAB, LENGTH, width=10, num_heads=4)
    with pytest.raises(ValueError, match="latent_dim"):
        sv.SentenceEncoder(VOCAB, LENGTH, latent_dim=0)
    model = small_vae()
    with pytest.raises(ValueError, match="length <= 8"):
        model(np.zeros((2, LENGTH + 1), "int32"))
    with pytest.raises(ValueError, match="at most 8"):
        model.encode(np.zeros((2, LENGTH + 1), "int32"))
    with pytest.raises(ValueError, match=r"int array"):
        model.encode(np.zeros((2, LENGTH), "float32"))
    with pytest.raises(ValueError, match="latent_dim=4"):
        model.decode(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="temperature"):
        model.decode(np.zeros((2, LATENT), "float32"), temperature=-1.0)
    with pytest.raises(ValueError, match="z must be"):
        model.nll(sentences(2), np.zeros((3, LATENT), "float32"))
    with pytest.raises(ValueError, match="n must be"):
        model.generate(0)
    with pytest.raises(ValueError, match="steps"):
        sv.interpolate(np.zeros(3), np.ones(3), steps=1)
    with pytest.raises(ValueError, match="one shape"):
        sv.interpolate(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="genlib GPT"):
        sv.copy_gpt(encoder)


def test_interpolate_endpoints():
    a, b = np.zeros(3), np.arange(3.0)
    path = sv.interpolate(a, b, steps=5)
    assert path.shape == (5, 3)
    np.testing.assert_allclose(path[0], a)
    np.testing.assert_allclose(path[-1], b)
    np.testing.assert_allclose(path[2], b / 2)


def test_as_text_cuts_at_the_first_eos():
    from genlib import data

    vocab = data.WordVocab.captions()
    ids = vocab.encode(["a dark coat", "this bag is big and pale"], max_length=10)
    ids[0, 4:6] = ids[1, :2]  # words after EOS are not part of the sentence
    assert sv.as_text(vocab, ids) == ["a dark coat", "this bag is big and pale"]
