"""Captioned Fashion-MNIST: deterministic captions whose words agree with the pixels."""

import numpy as np
import pytest

from genlib import data


@pytest.fixture(scope="module")
def raw():
    (x, y), _ = data.load_fashion_mnist()
    return data.subset(x, y, 400, seed=3)


def _direct_attributes(x, y):
    # An independent, per-image computation of the documented rule.
    out = []
    for img, c in zip(x, y):
        v = img.astype("float64") / 255.0
        fg = v[v > data.FOREGROUND]
        tone = fg.mean() if fg.size else 0.0
        size = fg.size / v.size
        out.append((int(tone > data.TONE_THRESHOLDS[c]), int(size > data.SIZE_THRESHOLDS[c])))
    return np.array(out)


def test_attributes_agree_with_pixels(raw):
    x, y = raw
    attributes = data.caption_attributes(x, y)
    np.testing.assert_array_equal(attributes, _direct_attributes(x, y))
    # Per-class medians as thresholds: both values of each attribute occur.
    assert 0.2 < attributes.mean(0).min() and attributes.mean(0).max() < 0.8


def test_every_caption_names_its_label_and_attributes(raw):
    x, y = raw
    attributes = data.caption_attributes(x, y)
    captions = data.make_captions(y, attributes, seed=0)
    for caption, label, (tone, size) in zip(captions, y, attributes):
        assert data.parse_caption(caption) == (label, tone, size), caption
    # Several phrasings are used.
    assert len({c.split()[0] + c.split()[1] for c in captions}) > 3


def test_captions_deterministic_for_a_seed(raw):
    x, y = raw
    attributes = data.caption_attributes(x, y)
    assert data.make_captions(y, attributes, seed=5) == data.make_captions(y, attributes, seed=5)
    assert data.make_captions(y, attributes, seed=5) != data.make_captions(y, attributes, seed=6)


def test_loader_matches_pixels_and_holds_out_combinations():
    ds = data.captioned_fashion_mnist(size=28, value_range=(0, 1), n_train=600, n_test=300, seed=0)
    again = data.captioned_fashion_mnist(size=28, value_range=(0, 1), n_train=600, n_test=300, seed=0)
    assert ds.captions_train == again.captions_train and ds.captions_test == again.captions_test
    for x, y, a, caps in ((ds.x_train, ds.y_train, ds.attributes_train, ds.captions_train),
                          (ds.x_test, ds.y_test, ds.attributes_test, ds.captions_test)):
        assert x.shape == (len(y), 28, 28, 1) and len(caps) == len(y)
        np.testing.assert_array_equal(data.caption_attributes(data.unscale(x), y), a)
        assert all(data.parse_caption(c) == (yy, *aa) for c, yy, aa in zip(caps, y, a))
    held = {tuple(h) for h in data.HELDOUT_COMBINATIONS}
    train_combos = {(int(c), int(t), int(s)) for c, (t, s) in zip(ds.y_train, ds.attributes_train)}
    assert not train_combos & held
    test_combos = [(int(c), int(t), int(s)) for c, (t, s) in zip(ds.y_test, ds.attributes_test)]
    np.testing.assert_array_equal(ds.heldout_test, [c in held for c in test_combos])
    assert 0 < ds.heldout_test.mean() < 0.5
    small = data.captioned_fashion_mnist(size=16, value_range=(-1, 1), n_train=100, n_test=50)
    assert small.x_train.shape[1:] == (16, 16, 1) and small.x_train.min() >= -1


def test_word_vocab_round_trip_and_errors():
    vocab = data.WordVocab.captions()
    captions = ["a photo of a dark small ankle boot", "this t-shirt is wide and pale"]
    ids = vocab.encode(captions, max_length=12)
    assert ids.shape == (2, 12) and ids.dtype == np.int32
    assert [vocab.decode(r) for r in ids] == captions
    assert (ids == data.WordVocab.EOS).sum(axis=1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("a purple coat")
    with pytest.raises(ValueError, match="max_length"):
        vocab.encode("a photo of a dark small ankle boot", max_length=5)
    with pytest.raises(ValueError, match="distinct"):
        data.WordVocab(["a", "a"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        data.caption_attributes(np.zeros((2, 28, 28), "float32"), [0, 1])
    with pytest.raises(ValueError, match="one label"):
        data.caption_attributes(np.zeros((2, 28, 28), "uint8"), [0])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        data.make_captions([0, 1], np.zeros((2, 3), "int32"))
