"""Tests of genlib.synthetic: the ConvNet, k-centre selection, the evaluation protocol, contrastive learning.

Backend-neutral: they run under TensorFlow, JAX and PyTorch."""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from genlib import synthetic as syn

SHAPE = (8, 8, 1)


def toy_data(n_per_class=4, num_classes=3, seed=0):
    """A tiny labelled set: each class a different mean brightness pattern, plus noise."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.3 * c - 0.3, 0.3, (n_per_class, *SHAPE)) for c in range(num_classes)])
    y = np.repeat(np.arange(num_classes), n_per_class)
    return np.clip(x, -1, 1).astype("float32"), y.astype("int32")



# ---------------------------------------------------------------------------
# The network

def test_reinitialize_is_seeded_and_changes_weights():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    syn.reinitialize(net, 1)
    first = [w.numpy().copy() for w in net.weights]
    syn.reinitialize(net, 2)
    assert not np.allclose(first[0], net.weights[0].numpy())
    syn.reinitialize(net, 1)
    for a, w in zip(first, net.weights):
        np.testing.assert_array_equal(a, w.numpy())



# ---------------------------------------------------------------------------
# k-centre selection

def test_k_center_picks_the_known_farthest_points():
    # Class 0 on a line: mean 3.2, so the first centre is 3; then 10 (7 away), then 0 (3 away from 3).
    # Class 1 in the plane: first the point nearest its mean (the origin), then the corners by distance.
    line = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [10.0, 0.0]]
    plane = [[0.0, 0.0], [0.1, 0.1], [-5.0, 0.0], [0.0, 4.0], [3.0, -2.0], [0.2, 0.0]]
    features = np.array(line + plane)
    labels = np.array([0] * 5 + [1] * 6)
    picks = syn.k_center_indices(features, labels, per_class=3)
    np.testing.assert_array_equal(picks, [3, 4, 0, 5, 7, 8])
    assert list(syn.k_center_indices(features, labels, per_class=1)) == [3, 5]


def covering_radius(f, chosen):
    """The largest distance from a row of ``f`` to its nearest chosen row."""
    return np.sqrt(((f[:, None] - f[list(chosen)][None]) ** 2).sum(-1)).min(1).max()


def test_k_center_is_class_balanced_and_within_twice_the_best_radius():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(30, 3)), np.repeat(np.arange(3), 10)
    k = 3
    picks = syn.k_center_indices(features, labels, per_class=k)
    assert len(set(picks)) == 9 and list(labels[picks]) == [0] * k + [1] * k + [2] * k
    for c in range(3):  # the greedy covering radius is at most twice the optimum (brute force)
        f = features[labels == c]
        chosen = np.flatnonzero(np.isin(np.flatnonzero(labels == c), picks[c * k:(c + 1) * k]))
        best = min(covering_radius(f, s) for s in itertools.combinations(range(10), k))
        assert best <= covering_radius(f, chosen) <= 2 * best + 1e-9, (c, covering_radius(f, chosen), best)


def test_k_center_rejects_bad_arguments():
    f, y = np.zeros((4, 2)), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="per_class must be an int >= 1"):
        syn.k_center_indices(f, y, per_class=0)
    with pytest.raises(ValueError, match="fewer than per_class=3"):
        syn.k_center_indices(f, y, per_class=3)
    with pytest.raises(ValueError, match="labels must lie in"):
        syn.k_center_indices(f, y, per_class=1, num_classes=1)
    with pytest.raises(ValueError, match="\\(N, D\\) features"):
        syn.k_center_indices(f[:3], y, per_class=1)
    with pytest.raises(ValueError, match="labels must be integers"):
        syn.k_center_indices(f, y.astype(float), per_class=1)
    with pytest.raises(ValueError, match="class 2 has 0 examples"):
        syn.k_center_indices(f, y, per_class=1, num_classes=3)

# ---------------------------------------------------------------------------
# The evaluation protocol

def test_evaluation_protocol_is_reproducible_for_a_seed():
    x, y = toy_data(n_per_class=6)
    xt, yt = toy_data(n_per_class=5, seed=3)
    evaluator = syn.ClassifierEvaluator(xt, yt, num_classes=3, width=4, depth=2, steps=12, batch_size=8)
    a = evaluator.accuracy(x, y, seed=4)
    probs_a = evaluator.model.predict(xt, verbose=0)
    result = evaluator.evaluate(x, y, seeds=(5, 4))  # seed 5 in between, then seed 4 again
    np.testing.assert_allclose(evaluator.model.predict(xt, verbose=0), probs_a, rtol=1e-5, atol=1e-6)
    assert result["accuracies"][1] == a
    assert result["mean"] == pytest.approx(np.mean(result["accuracies"]))
    assert result["std"] == pytest.approx(np.std(result["accuracies"]))
    evaluator.train(x, y, seed=5)
    assert not np.allclose(probs_a, evaluator.model.predict(xt, verbose=0))



# ---------------------------------------------------------------------------
# Multi-positive contrastive loss

def direct_multi_positive(z, groups, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total, anchors = 0.0, 0
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        pos = [j for j in others if groups[j] == groups[i]]
        if not pos:
            continue
        logits = np.array([z[i] @ z[j] / tau for j in others])
        log_q = logits - np.log(np.sum(np.exp(logits)))
        total += -np.mean([log_q[others.index(j)] for j in pos])
        anchors += 1
    return total / anchors



def test_multi_positive_loss_equals_direct_computation():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(9, 4)).astype("float32")
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])  # group 3 has no positive: not an anchor
    got = float(syn.multi_positive_contrastive_loss(z, groups, temperature=0.5))
    assert got == pytest.approx(direct_multi_positive(z.astype("float64"), groups, 0.5), rel=1e-4)



def test_multi_positive_loss_reduces_to_infonce_with_one_positive():
    rng = np.random.default_rng(6)
    n, tau = 5, 0.2
    views = rng.normal(size=(2 * n, 8))  # 2n views, view i and i + n come from the same image
    groups = np.concatenate([np.arange(n), np.arange(n)])
    z = views / np.linalg.norm(views, axis=1, keepdims=True)
    sim = z @ z.T / tau
    nt_xent = []
    for i in range(2 * n):  # SimCLR's NT-Xent: -log exp(s_ip) / sum_{k != i} exp(s_ik)
        p = (i + n) % (2 * n)
        denom = np.sum(np.exp(np.delete(sim[i], i)))
        nt_xent.append(-np.log(np.exp(sim[i, p]) / denom))
    got = float(syn.multi_positive_contrastive_loss(views.astype("float32"), groups, temperature=tau))
    assert got == pytest.approx(np.mean(nt_xent), rel=1e-4)



def test_contrastive_encoder_trains_and_round_trips(tmp_path):
    x, y = toy_data(n_per_class=8)
    model = syn.ContrastiveEncoder(SHAPE, width=4, depth=2, projection_dim=8, temperature=0.5)
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = model.fit(x, y, batch_size=24, epochs=4, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert model.encode(x).shape == (24, 2 * 2 * 4)
    path = tmp_path / "enc.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)



def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    f = rng.normal(size=(300, 5)) + 4.0 * np.eye(3, 5)[y]
    assert syn.linear_probe(f[:200], y[:200], f[200:], y[200:], epochs=15, learning_rate=0.1) > 0.9



# ---------------------------------------------------------------------------
# Augmentations

def test_augment_keeps_shape_and_range_and_is_seeded():
    x, _ = toy_data()
    aug = syn.Augment(max_shift=2, flip=True, noise_std=0.0, fill_value=-1.0, seed=3)
    a = ops.convert_to_numpy(aug(x, training=True))
    b = ops.convert_to_numpy(syn.Augment(max_shift=2, flip=True, fill_value=-1.0, seed=3)(x, training=True))
    c = ops.convert_to_numpy(aug(x, training=True))  # the next draw of the same layer
    assert a.shape == x.shape
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # shifts and flips only move pixels
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(ops.convert_to_numpy(aug(x, training=False)), x)



def test_augment_shift_and_flip_move_pixels_as_stated():
    img = np.full((1, 5, 5, 1), -1.0, "float32")
    img[0, 1, 0, 0] = 1.0  # one bright pixel, row 1, column 0
    flipped = ops.convert_to_numpy(syn.Augment(max_shift=0, flip=True, seed=0)(np.repeat(img, 64, 0)))
    # Each copy is either unchanged or mirrored to column 4; both happen among 64 draws.
    cols = {int(np.argwhere(f[..., 0] > 0)[0][1]) for f in flipped}
    assert cols == {0, 4}
    shifted = ops.convert_to_numpy(syn.Augment(max_shift=1, flip=False, seed=0)(np.repeat(img, 64, 0)))
    for f in shifted:  # the pixel moves by at most one place, or out of the picture (then all background)
        where = np.argwhere(f[..., 0] > 0)
        assert len(where) <= 1 and (len(where) == 0 or (abs(where[0][0] - 1) <= 1 and where[0][1] <= 1))
    noisy = ops.convert_to_numpy(syn.Augment(max_shift=0, flip=False, noise_std=0.5, seed=0)(img))
    assert 0.1 < np.std(noisy - img) < 1.0



def test_paired_views_and_grouped_order():
    x, _ = toy_data()
    views, groups = syn.paired_views(x, seed=0)
    assert views.shape == (2 * len(x), *SHAPE)
    np.testing.assert_array_equal(views[0::2], views[1::2])
    np.testing.assert_array_equal(groups, np.repeat(np.arange(len(x)), 2))
    g = np.repeat(np.arange(5), 3)[np.random.default_rng(0).permutation(15)]
    order = syn.grouped_order(g, 3, seed=1)
    assert sorted(order) == list(range(15))
    assert all(len(set(g[order][i:i + 3])) == 1 for i in range(0, 15, 3))



def test_contrastive_encoder_with_augmentation_round_trips(tmp_path):
    x, _ = toy_data()
    views, groups = syn.paired_views(x)
    enc = syn.ContrastiveEncoder(SHAPE, width=4, depth=2, projection_dim=8,
                                 augmentation={"max_shift": 1, "flip": True, "noise_std": 0.1, "seed": 0})
    enc.build()
    enc.compile(optimizer=keras.optimizers.Adam(1e-2))
    enc.fit(views, groups, batch_size=8, epochs=1, shuffle=False, verbose=0)
    # Training views differ from the image, the representation does not use augmentation.
    assert not np.allclose(ops.convert_to_numpy(enc(x, training=True)), ops.convert_to_numpy(enc(x)))
    enc.save(tmp_path / "enc.keras")
    back = keras.saving.load_model(tmp_path / "enc.keras")
    assert back.augmentation == enc.augmentation
    np.testing.assert_allclose(back.encode(x), enc.encode(x), atol=1e-5)



# ---------------------------------------------------------------------------
# Bad arguments

def test_bad_arguments_give_clear_errors():
    x, y = toy_data(n_per_class=2)
    with pytest.raises(ValueError, match="2\\*\\*depth"):
        syn.build_convnet((4, 4, 1), depth=3)
    with pytest.raises(ValueError, match="temperature must be in \\(0, inf\\)"):
        syn.multi_positive_contrastive_loss(np.ones((2, 2), "float32"), np.zeros(2), temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be a number"):
        syn.ContrastiveEncoder(SHAPE, width=4, depth=2, temperature=True)  # was taken as 1.0
    evaluator = syn.ClassifierEvaluator(x, y, num_classes=3, width=4, depth=2, steps=2)
    with pytest.raises(ValueError, match="empty"):
        evaluator.accuracy(x[:0], y[:0])
    with pytest.raises(ValueError, match="at least one seed"):
        evaluator.evaluate(x, y, seeds=())
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        evaluator.accuracy(x, y[:5])
    with pytest.raises(ValueError, match="needs \\(images, groups\\)"):
        model = syn.ContrastiveEncoder(SHAPE, width=4, depth=2)
        model.build()
        model.compute_loss(x, None)
    with pytest.raises(ValueError, match="max_shift"):
        syn.Augment(max_shift=-1)
    with pytest.raises(ValueError, match="flip"):
        syn.Augment(flip="yes")
    with pytest.raises(ValueError, match="noise_std"):
        syn.Augment(noise_std=-0.1)
    with pytest.raises(ValueError, match="augmentation"):
        syn.ContrastiveEncoder(SHAPE, augmentation="flip")
    with pytest.raises(ValueError, match="group_size"):
        syn.grouped_order([0, 0, 1], 2)
