"""Tests for genlib.transformer: causality, the cache, attention weights, sampling, saving, bad arguments."""

import math

import keras
import numpy as np
import pytest

import genlib  # noqa: F401
from genlib import distributions
from genlib import transformer as tr

VOCAB, LENGTH = 11, 12


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = tr.GPT(VOCAB, LENGTH, width=16, depth=2, num_heads=4)
    m.build((None, LENGTH))
    return m


def ids(batch=2, length=LENGTH, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype("int32")


def test_output_shape_and_loss_is_cross_entropy(model):
    x = ids()
    logits = keras.ops.convert_to_numpy(model(x))
    assert logits.shape == (2, LENGTH, VOCAB)
    y = ids(seed=1)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, y[..., None], -1).mean()
    loss = float(model.compute_loss(x, y, keras.ops.convert_to_tensor(logits)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert float(model.bpc_tracker.result()) == pytest.approx(expected / math.log(2), rel=1e-5)


@pytest.mark.parametrize("j", [0, 5, LENGTH - 1])
def test_causality_changing_token_j_changes_no_earlier_output(model, j):
    x = ids(batch=1)
    x2 = x.copy()
    x2[0, j] = (x2[0, j] + 1) % VOCAB
    a, b = (keras.ops.convert_to_numpy(model(v)) for v in (x, x2))
    np.testing.assert_allclose(a[0, :j], b[0, :j], atol=1e-6)
    assert np.abs(a[0, j] - b[0, j]).max() > 1e-4  # the test can fail: position j does see token j


def test_causal_attention_mask():
    mask = keras.ops.convert_to_numpy(tr.causal_attention_mask(3, 5, start=2))
    # Query i sits at position 2 + i and sees keys 0..2 + i.
    np.testing.assert_array_equal(mask, np.arange(5)[None, :] <= np.arange(3)[:, None] + 2)
    square = keras.ops.convert_to_numpy(tr.causal_attention_mask(4, 4))
    np.testing.assert_array_equal(square, np.tril(np.ones((4, 4), bool)))


def test_attention_rows_sum_to_one_and_vanish_above_diagonal(model):
    maps = model.attention_maps(ids(length=9))
    assert maps.shape == (2, 2, 4, 9, 9)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones((9, 9), bool), k=1)
    assert np.all(maps[..., upper] == 0.0)
    assert np.all(maps[..., ~upper] > 0.0)


def test_cache_gives_the_same_logits_as_the_full_pass(model):
    x = ids(batch=2)
    full = keras.ops.convert_to_numpy(model(x))
    k_cache, v_cache = model.empty_cache(2)
    # Prefill the first 5 tokens, then feed the rest one at a time.
    logits, k_cache, v_cache = model.call_with_cache(x[:, :5], k_cache, v_cache, 0)
    steps = [keras.ops.convert_to_numpy(logits)]
    for t in range(5, LENGTH):
        logits, k_cache, v_cache = model.call_with_cache(x[:, t: t + 1], k_cache, v_cache, t)
        steps.append(keras.ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 3), (0.0, None)])
def test_cached_and_uncached_samplers_give_identical_tokens(model, temperature, top_k):
    prompt = ids(batch=2, length=3)
    # 25 new tokens with a context of 12: the window fills and slides twice on the way.
    kwargs = dict(temperature=temperature, top_k=top_k, seed=7)
    a = tr.Sampler(model, use_cache=False)(prompt, 25, **kwargs)
    b = tr.Sampler(model, use_cache=True)(prompt, 25, **kwargs)
    assert a.shape == (2, 28)
    np.testing.assert_array_equal(a[:, :3], prompt)
    np.testing.assert_array_equal(a, b)


def test_samplers_agree_and_seed_matters(model):
    prompt = ids(batch=1, length=2)
    a = tr.Sampler(model, use_cache=False)(prompt, 15, seed=3)
    b = tr.Sampler(model, use_cache=True)(prompt, 15, seed=3)
    c = tr.Sampler(model, use_cache=True)(prompt, 15, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_compiled_sampler_sees_new_weights():
    """The compiled steps read the weights at every call (JAX once baked in those of the first trace)."""
    keras.utils.set_random_seed(2)
    m = tr.GPT(VOCAB, LENGTH, width=16, depth=1, num_heads=2)
    m.build((None, LENGTH))
    sampler = tr.Sampler(m, use_cache=True)
    prompt = ids(batch=2, length=2)
    greedy = dict(temperature=0.0, seed=0)
    sampler(prompt, 4, **greedy)
    bias = m.head.bias
    for favourite in (3, 7):  # make one token overwhelmingly likely: greedy decoding must pick it
        bias.assign(np.where(np.arange(VOCAB) == favourite, 100.0, 0.0).astype("float32"))
        np.testing.assert_array_equal(sampler(prompt, 4, **greedy)[:, 2:], favourite)


def test_generate_returns_seeded_token_arrays(model):
    a = model.generate(3, seed=5, batch_size=2, prompt=[1, 2], length=6, temperature=1.0)
    b = model.generate(3, seed=5, batch_size=2, prompt=[1, 2], length=6, temperature=1.0)
    c = model.generate(3, seed=6, batch_size=2, prompt=[1, 2], length=6, temperature=1.0)
    assert isinstance(a, np.ndarray) and a.dtype == np.int32 and a.shape == (3, 8)
    assert a.min() >= 0 and a.max() < VOCAB
    np.testing.assert_array_equal(a[:, :2], [[1, 2]] * 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The cache changes the cost, not the tokens.
    np.testing.assert_array_equal(a, model.generate(3, seed=5, batch_size=2, prompt=[1, 2], length=6,
                                                    use_cache=False))
    default = model.generate(2, seed=0)
    assert default.shape == (2, 1 + LENGTH) and np.all(default[:, 0] == 0)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(3, prompt=np.zeros((2, 3), "int32"))
    with pytest.raises(ValueError, match="n must"):
        model.generate(True)


def test_choose_tokens_greedy_top_k_and_frequencies():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype("float32")
    noise = -np.log(-np.log(rng.uniform(1e-7, 1, size=(4, 7)))).astype("float32")
    greedy = keras.ops.convert_to_numpy(tr.choose_tokens(logits, noise, np.float32(0.0), np.int32(0)))
    # Without top-k at T = 1 it is the shared Gumbel-max draw.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tr.choose_tokens(logits, noise, 1.0, 0)),
                                  keras.ops.convert_to_numpy(distributions.gumbel_max(logits, noise=noise)))
    top1 = keras.ops.convert_to_numpy(tr.choose_tokens(logits, noise, np.float32(5.0), np.int32(1)))
    np.testing.assert_array_equal(greedy, logits.argmax(-1))
    np.testing.assert_array_equal(top1, logits.argmax(-1))
    # Gumbel-max draws follow softmax(logits / T), restricted to the top k.
    n, temperature, k = 20000, 0.8, 3
    row = np.tile(logits[:1], (n, 1))
    g = -np.log(-np.log(rng.uniform(1e-7, 1, size=(n, 7)))).astype("float32")
    draws = keras.ops.convert_to_numpy(tr.choose_tokens(row, g, np.float32(temperature), np.int32(k)))
    keep = np.argsort(logits[0])[-k:]
    p = np.zeros(7)
    p[keep] = np.exp(logits[0, keep] / temperature)
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=7) / n, p, atol=0.015)


def test_round_trip_through_keras_file(model, tmp_path):
    path = tmp_path / "gpt.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = ids()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-6)
    assert loaded.get_config()["num_heads"] == 4


def test_layers_round_trip_config():
    for layer in (tr.TokenAndPositionEmbedding(5, 7, 8), tr.CausalSelfAttention(2, dropout=0.1),
                  tr.TransformerBlock(2, mlp_ratio=2)):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_fit_lowers_the_loss():
    keras.utils.set_random_seed(1)
    text = np.tile(np.arange(5, dtype="int32"), 400)  # a perfectly predictable sequence
    m = tr.GPT(5, 8, width=16, depth=1, num_heads=2)
    m.build((None, 8))
    m.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tr.CharWindows(text, 8, batch_size=16, num_batches=30, seed=0)
    history = m.fit(data, epochs=2, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["bits_per_char"][-1] == pytest.approx(history["loss"][-1] / math.log(2), rel=1e-4)


def test_windows():
    x, y = tr.sequential_windows(np.arange(23), 5)
    assert x.shape == y.shape == (4, 5)
    np.testing.assert_array_equal(y, x + 1)
    data = tr.CharWindows(np.arange(100), 6, batch_size=3, num_batches=2, seed=0)
    bx, by = data[0]
    assert bx.shape == (3, 6)
    np.testing.assert_array_equal(by, bx + 1)
    np.testing.assert_array_equal(data[0][0], bx)  # seeded: the same batch twice
    data.on_epoch_end()
    assert not np.array_equal(data[0][0], bx)  # a new epoch draws new windows


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="divid"):
        tr.GPT(VOCAB, LENGTH, width=10, num_heads=4)
    with pytest.raises(ValueError, match="must divide the width 10"):
        tr.CausalSelfAttention(4).build((None, 5, 10))
    with pytest.raises(ValueError, match="longer than max_length=12"):
        model(ids(length=LENGTH + 1))
    with pytest.raises(ValueError, match="longer than max_length=12"):
        tr.Sampler(model)(ids(length=LENGTH + 1), 2)
    with pytest.raises(ValueError, match="temperature"):
        tr.Sampler(model)(ids(length=3), 2, temperature=-1.0)
    for top_k in (0, True, 2.5):  # True used to pass as k = 1
        with pytest.raises(ValueError, match="top_k"):
            tr.Sampler(model)(ids(length=3), 2, top_k=top_k)
    for name in ("depth", "num_heads", "mlp_ratio", "vocab_size"):
        with pytest.raises(ValueError, match=name):  # True used to pass as 1
            tr.GPT(**{"vocab_size": VOCAB, "max_length": LENGTH, "width": 16, name: True})
    with pytest.raises(ValueError, match="max_length"):
        tr.TokenAndPositionEmbedding(5, True, 8)
    with pytest.raises(ValueError, match="batch, length"):
        model(np.zeros((2, 3, 4), "int32"))
    with pytest.raises(ValueError, match="dropout"):
        tr.CausalSelfAttention(2, dropout=1.5)
    with pytest.raises(ValueError, match="GPT"):
        tr.Sampler(keras.Sequential([keras.layers.Dense(2)]))
    # generate's prompt: the checks it shares with recurrent.CharLSTM (tr.prompt_ids)
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 10\]"):
        model.generate(2, prompt=[1, VOCAB], length=2)
    with pytest.raises(ValueError, match="integer token ids"):
        model.generate(2, prompt=[0.5, 1.0], length=2)
    with pytest.raises(ValueError, match="P >= 1"):
        model.generate(2, prompt=np.zeros((2, 0), "int32"), length=2)


# -- the conditioning hooks (memory slots and an embedding offset; chapter 13) ------------------


def memory(batch=2, slots=1, depth=2, width=16, seed=3):
    return np.random.default_rng(seed).normal(size=(batch, depth, slots, width)).astype("float32")


def test_without_memory_or_offset_the_gpt_is_unchanged(model):
    x = ids()
    plain = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, memory=None, offset=None)), plain)
    zero = keras.ops.zeros((2, 16))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, offset=zero)), plain)
    # The same weights in a fresh GPT (as a chapter-8 checkpoint is loaded) give the same logits.
    twin = tr.GPT.from_config(model.get_config())
    twin.build((None, LENGTH))
    twin.set_weights(model.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(x)), plain)


def test_memory_is_seen_by_every_position_and_keeps_causality(model):
    x = ids(batch=2)
    m = memory(slots=2)
    _, maps = model(x, return_attention=True, memory=keras.ops.convert_to_tensor(m))
    maps = np.stack([keras.ops.convert_to_numpy(w) for w in maps])  # (depth, B, H, T, 2 + T)
    assert maps.shape == (2, 2, 4, LENGTH, 2 + LENGTH)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert (maps[..., :2] > 0).all()  # every query sees both memory slots, the first token included
    np.testing.assert_array_equal(maps[..., 2:][..., ~np.tril(np.ones((LENGTH, LENGTH), bool))], 0.0)
    with_memory = keras.ops.convert_to_numpy(model(x, memory=m))
    assert np.abs(with_memory - keras.ops.convert_to_numpy(model(x))).max() > 1e-4
    # Still causal: changing token j changes no earlier output.
    x2 = x.copy()
    x2[:, 6] = (x2[:, 6] + 1) % VOCAB
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x2, memory=m))[:, :6], with_memory[:, :6], atol=1e-6)
    # Each sentence reads its own memory.
    swapped = keras.ops.convert_to_numpy(model(x, memory=m[::-1]))
    assert np.abs(swapped[0] - with_memory[0]).max() > 1e-4


def test_memory_and_offset_carry_gradients(model):
    x = keras.ops.convert_to_tensor(ids())
    m = keras.Variable(memory())
    o = keras.Variable(np.zeros((2, 16), "float32"))

    def loss():
        return keras.ops.sum(keras.ops.square(model(x, memory=m.value, offset=o.value)))

    from genlib._util import value_and_grad

    _, _, grads = value_and_grad(loss, [m, o])
    for g in grads:
        assert np.abs(keras.ops.convert_to_numpy(g)).max() > 0


def test_bad_memory_and_offset_shapes(model):
    with pytest.raises(ValueError, match="memory must be"):
        model(ids(), memory=np.zeros((2, 3, 1, 16), "float32"))  # depth is 2
    with pytest.raises(ValueError, match="memory must be"):
        model(ids(), memory=np.zeros((2, 2, 1, 8), "float32"))
    with pytest.raises(ValueError, match="offset must be"):
        model(ids(), offset=np.zeros((2, 8), "float32"))
    with pytest.raises(ValueError, match="memory must be"):
        model.blocks[0].attention(keras.ops.zeros((2, 4, 16)), memory=keras.ops.zeros((2, 16)))
