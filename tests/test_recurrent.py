"""Tests for genlib.recurrent: the loss, stepping vs the full pass, seeded generation, saving, bad arguments."""

import math

import keras
import numpy as np
import pytest

import genlib  # noqa: F401
from genlib import recurrent as rc

VOCAB, LENGTH = 11, 9


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = rc.CharLSTM(VOCAB, embed_dim=8, units=16, depth=2)
    m.build((None, None))
    return m


def ids(batch=2, length=LENGTH, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype("int32")


def test_loss_is_the_manual_cross_entropy(model):
    x, y = ids(), ids(seed=1)
    logits = keras.ops.convert_to_numpy(model(x))
    assert logits.shape == (2, LENGTH, VOCAB)
    z = logits.astype("float64")
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, y[..., None], -1).mean()
    loss = float(model.compute_loss(x, y, keras.ops.convert_to_tensor(logits)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert float(model.bpc_tracker.result()) == pytest.approx(expected / math.log(2), rel=1e-5)


def test_stepping_gives_the_full_pass_and_constant_state(model):
    x = ids(batch=3)
    full, final = model(x, return_state=True)
    states = model.zero_state(3)
    steps = []
    for t in range(LENGTH):
        logits, states = model.step(x[:, t], states)
        steps.append(keras.ops.convert_to_numpy(logits))
        # The memory is the states: the same shapes after any number of tokens.
        assert [tuple(s.shape) for pair in states for s in pair] == [(3, 16)] * 4
    np.testing.assert_allclose(np.stack(steps, 1), keras.ops.convert_to_numpy(full), atol=1e-5)
    for (h, c), (h2, c2) in zip(states, final):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(h), keras.ops.convert_to_numpy(h2), atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(c), keras.ops.convert_to_numpy(c2), atol=1e-5)
    # Continuing from a carried state equals reading the whole sequence at once.
    first, mid = model(x[:, :4], return_state=True)
    rest = model(x[:, 4:], initial_state=mid)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rest), keras.ops.convert_to_numpy(full)[:, 4:], atol=1e-5)


def test_generate_is_deterministic_under_a_seed(model, monkeypatch):
    a = model.generate(3, seed=5, batch_size=2, prompt=[1, 2], length=6)
    b = model.generate(3, seed=5, batch_size=2, prompt=[1, 2], length=6)
    c = model.generate(3, seed=6, batch_size=2, prompt=[1, 2], length=6)
    assert isinstance(a, np.ndarray) and a.dtype == np.int32 and a.shape == (3, 8)
    assert a.min() >= 0 and a.max() < VOCAB
    np.testing.assert_array_equal(a[:, :2], [[1, 2]] * 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    monkeypatch.setattr(rc, "DEFAULT_LENGTH", 5)  # length=None: DEFAULT_LENGTH new tokens
    default = model.generate(2, seed=0, progress=False)
    assert default.shape == (2, 1 + 5) and np.all(default[:, 0] == 0)
    per_row = model.generate(2, seed=0, prompt=np.array([[3, 4, 5], [6, 7, 8]]), length=2)
    np.testing.assert_array_equal(per_row[:, :3], [[3, 4, 5], [6, 7, 8]])


def test_greedy_and_top1_follow_the_most_likely_token(model):
    prompt = np.array([4, 2, 9], "int32")
    greedy = model.generate(1, seed=0, prompt=prompt, length=5, temperature=0.0)[0]
    top1 = model.generate(1, seed=7, prompt=prompt, length=5, temperature=1.5, top_k=1)[0]
    np.testing.assert_array_equal(greedy, top1)
    # Each greedy token is the argmax of the full pass's logits at the position before it.
    logits = keras.ops.convert_to_numpy(model(greedy[None, :-1]))[0]
    np.testing.assert_array_equal(greedy[3:], logits[2:].argmax(-1))


def test_compiled_generation_sees_new_weights():
    keras.utils.set_random_seed(2)
    m = rc.CharLSTM(VOCAB, embed_dim=4, units=8)
    m.generate(2, seed=0, length=3, temperature=0.0)
    for favourite in (3, 7):  # one overwhelmingly likely token: greedy decoding must pick it
        m.head.bias.assign(np.where(np.arange(VOCAB) == favourite, 100.0, 0.0).astype("float32"))
        np.testing.assert_array_equal(m.generate(2, seed=0, length=3, temperature=0.0)[:, 1:], favourite)


def test_round_trip_through_keras_file(model, tmp_path):
    path = tmp_path / "lstm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, rc.CharLSTM)
    x = ids()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-6)
    assert loaded.get_config()["units"] == 16 and loaded.get_config()["depth"] == 2
    np.testing.assert_array_equal(loaded.generate(2, seed=3, length=4), model.generate(2, seed=3, length=4))


def test_parameter_count_and_matching_width():
    for depth in (1, 2):
        m = rc.CharLSTM(VOCAB, embed_dim=8, units=24, depth=depth)
        m.build((None, None))
        assert m.count_params() == rc.lstm_param_count(VOCAB, 8, 24, depth)
    target = 100_000
    units = rc.lstm_units_for(target, 65, embed_dim=64)
    assert units % 8 == 0
    err = abs(rc.lstm_param_count(65, 64, units, 1) - target)
    assert err <= abs(rc.lstm_param_count(65, 64, units + 8, 1) - target)
    assert err <= abs(rc.lstm_param_count(65, 64, units - 8, 1) - target)


def test_fit_learns_a_periodic_text():
    keras.utils.set_random_seed(1)
    from genlib.transformer import CharWindows

    text = np.tile(np.arange(5, dtype="int32"), 400)  # a perfectly predictable sequence
    m = rc.CharLSTM(5, embed_dim=8, units=32)
    m.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = m.fit(CharWindows(text, 8, batch_size=16, num_batches=30, seed=0), epochs=2, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["bits_per_char"][-1] == pytest.approx(history["loss"][-1] / math.log(2), rel=1e-4)
    continued = m.generate(1, seed=0, prompt=[2, 3], length=10, temperature=0.0)[0]
    np.testing.assert_array_equal(continued, (np.arange(12) + 2) % 5)


def test_bad_arguments(model):
    for name in ("vocab_size", "embed_dim", "units", "depth"):
        with pytest.raises(ValueError, match=name):
            rc.CharLSTM(**{"vocab_size": VOCAB, name: True})
        with pytest.raises(ValueError, match=name):
            rc.CharLSTM(**{"vocab_size": VOCAB, name: 0})
    with pytest.raises(ValueError, match="dropout"):
        rc.CharLSTM(VOCAB, dropout=1.5)
    with pytest.raises(ValueError, match="batch, length"):
        model(np.zeros((2, 3, 4), "int32"))
    with pytest.raises(ValueError, match="pairs"):
        model(ids(), initial_state=model.zero_state(2)[:1])
    with pytest.raises(ValueError, match="units=16"):
        model(ids(), initial_state=[[np.zeros((2, 5), "float32")] * 2] * 2)
    with pytest.raises(ValueError, match="n must"):
        model.generate(True)
    with pytest.raises(ValueError, match="length"):
        model.generate(2, length=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(2, length=2, temperature=-1.0)
    for top_k in (0, True, 2.5):
        with pytest.raises(ValueError, match="top_k"):
            model.generate(2, length=2, top_k=top_k)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(3, prompt=np.zeros((2, 3), "int32"))
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 10\]"):
        model.generate(2, prompt=[1, VOCAB])
    with pytest.raises(ValueError, match="integer"):
        model.generate(2, prompt=[0.5, 1.0])
    with pytest.raises(ValueError, match="num_params"):
        rc.lstm_units_for(0, VOCAB)
