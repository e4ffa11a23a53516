"""Tests of genlib.synthetic: matching distances, distillation loops, the evaluation protocol, contrastive loss.

Backend-neutral: they run under TensorFlow, JAX and PyTorch."""

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util
from genlib import synthetic as syn

SHAPE = (8, 8, 1)


def toy_data(n_per_class=4, num_classes=3, seed=0):
    """A tiny labelled set: each class a different mean brightness pattern, plus noise."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.3 * c - 0.3, 0.3, (n_per_class, *SHAPE)) for c in range(num_classes)])
    y = np.repeat(np.arange(num_classes), n_per_class)
    return np.clip(x, -1, 1).astype("float32"), y.astype("int32")


def class_gradients(net, x, c):
    weights = [w for w in net.trainable_weights if len(w.shape) >= 2]

    def loss():
        logits = net(x, training=True)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(np.full(len(x), c), logits, from_logits=True))

    return _util.value_and_grad(loss, weights)[2]


# ---------------------------------------------------------------------------
# Distances


def test_gradient_matching_distance_zero_for_identical_batches_positive_otherwise():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    x, _ = toy_data()
    g_a = class_gradients(net, x[:4], 0)
    g_same = class_gradients(net, x[:4].copy(), 0)
    g_other = class_gradients(net, x[4:8], 0)
    assert float(syn.gradient_matching_distance(g_a, g_same)) == pytest.approx(0.0, abs=1e-4)
    assert float(syn.gradient_matching_distance(g_a, g_other)) > 1e-2


def test_gradient_matching_distance_is_per_output_one_minus_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 3, 2, 5)), rng.normal(size=(3, 3, 2, 5))
    bias = rng.normal(size=(5,))
    ra, rb = a.reshape(-1, 5).T, b.reshape(-1, 5).T
    expected = np.sum(1 - np.sum(ra * rb, 1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)))
    got = float(syn.gradient_matching_distance([a.astype("float32"), bias], [b.astype("float32"), -bias]))
    assert got == pytest.approx(expected, rel=1e-4)  # the bias (a vector) is skipped
    # A positive rescaling of one output's gradient does not change the distance.
    scaled = a.copy()
    scaled[..., 2] *= 7.0
    assert float(syn.gradient_matching_distance([a.astype("float32")], [scaled.astype("float32")])) == \
        pytest.approx(0.0, abs=1e-4)


def test_weight_gradients_equal_the_plain_gradients():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    x, _ = toy_data()
    labels = np.zeros(4, "int32")

    def loss():
        logits = net(x[:4], training=True)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    expected = _util.value_and_grad(loss, net.trainable_variables)[2]
    got = syn.weight_gradients(net, ops.convert_to_tensor(x[:4]), ops.convert_to_tensor(labels))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(ops.convert_to_numpy(g), ops.convert_to_numpy(e), rtol=1e-4, atol=1e-6)


def test_weight_gradients_can_be_differentiated_again():
    # Gradient matching's second derivative, checked by central differences on a smooth network
    # (a ReLU ConvNet's weight gradients jump where a unit switches, so differences mean little there).
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    labels = ops.convert_to_tensor(np.array([0, 1, 1], "int32"))
    x = np.random.default_rng(4).normal(size=(3, 3)).astype("float32")

    def f(images):  # a smooth function of the images through their weight gradients
        return sum(ops.sum(ops.square(g)) for g in syn.weight_gradients(net, images, labels))

    analytic = ops.convert_to_numpy(_util.input_gradient(f, ops.convert_to_tensor(x)))
    direction = np.random.default_rng(5).normal(size=x.shape).astype("float32")
    h = 1e-2
    value = lambda z: float(ops.convert_to_numpy(f(ops.convert_to_tensor(z.astype("float32")))))  # noqa: E731
    numeric = (value(x + h * direction) - value(x - h * direction)) / (2 * h)
    assert abs(numeric) > 1e-3
    assert float(np.sum(analytic * direction)) == pytest.approx(numeric, rel=0.02)


def test_class_match_returns_the_distance_and_its_image_gradient():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    class_match, _ = syn.gradient_matching_functions(net, 0.01)
    x, _ = toy_data()
    c = ops.convert_to_tensor(0, "int32")
    loss, grad = class_match(ops.convert_to_tensor(x[:4]), ops.convert_to_tensor(x[4:6]), c)
    expected = float(syn.gradient_matching_distance(class_gradients(net, x[:4], 0), class_gradients(net, x[4:6], 0)))
    assert float(ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-4)
    grad = ops.convert_to_numpy(grad)
    assert grad.shape == x[4:6].shape and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_distribution_matching_distance_is_squared_difference_of_means():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(7, 3, 2)), rng.normal(size=(4, 3, 2))
    expected = np.sum((real.reshape(7, -1).mean(0) - fake.reshape(4, -1).mean(0)) ** 2)
    assert float(syn.distribution_matching_distance(real, fake)) == pytest.approx(expected, rel=1e-5)
    real2, fake2 = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    both = float(syn.distribution_matching_distance([real, real2], [fake, fake2]))
    assert both == pytest.approx(expected + np.sum((real2.mean(0) - fake2.mean(0)) ** 2), rel=1e-5)
    assert float(syn.distribution_matching_distance(real, real[::-1])) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="as many"):
        syn.distribution_matching_distance([real], [fake, fake])


# ---------------------------------------------------------------------------
# Distillation


@pytest.mark.parametrize("method", ["gradient", "distribution", "distribution_multi"])
def test_distillation_reduces_the_matching_loss_on_a_tiny_problem(method):
    x, y = toy_data(n_per_class=4)
    synthetic = syn.SyntheticSet(SHAPE, num_classes=3, images_per_class=1, seed=0)
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    syn.reinitialize(net, seed=0)
    # A fixed network and every real image in each batch: a deterministic loss that must fall.
    common = dict(iterations=15, real_per_class=4, convnet=net, redraw_network=False, clip=None)
    if method == "gradient":
        history = syn.distill_gradient_matching(synthetic, x, y, learning_rate=0.05, **common)
    else:
        history = syn.distill_distribution_matching(synthetic, x, y, learning_rate=0.5,
                                                    multi_layer=method == "distribution_multi", **common)
    losses = history["loss"]
    assert len(losses) == 15 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradient_matching_inner_loop_trains_the_network():
    x, y = toy_data(n_per_class=4)
    synthetic = syn.SyntheticSet(SHAPE, num_classes=3, images_per_class=2, seed=0).initialize_from(x, y)
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    syn.reinitialize(net, seed=0)
    before = [w.numpy().copy() for w in net.trainable_weights]
    syn.distill_gradient_matching(synthetic, x, y, iterations=1, real_per_class=2, matches_per_network=2,
                                  network_steps=2, convnet=net, redraw_network=False)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, net.trainable_weights))


def test_synthetic_set_initialisation_labels_and_round_trip(tmp_path):
    x, y = toy_data(n_per_class=4)
    synthetic = syn.SyntheticSet(SHAPE, num_classes=3, images_per_class=2, seed=0).initialize_from(x, y, seed=1)
    images, labels = synthetic.numpy()
    assert images.shape == (6, *SHAPE) and list(labels) == [0, 0, 1, 1, 2, 2]
    for img, lab in zip(images, labels):  # each image is a real image of its own class
        assert any(np.array_equal(img, xr) for xr in x[y == lab])
    idx = keras.Input((), dtype="int32")
    model = keras.Model(idx, synthetic(idx))
    path = tmp_path / "set.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    query = np.array([5, 0, 3], dtype="int32")
    np.testing.assert_array_equal(loaded.predict(query, verbose=0), model.predict(query, verbose=0))
    np.testing.assert_array_equal(model.predict(query, verbose=0), images[query])


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
# Bad arguments


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="images_per_class must be an int >= 1, got 0"):
        syn.SyntheticSet(SHAPE, num_classes=3, images_per_class=0)
    with pytest.raises(ValueError, match="image_shape"):
        syn.SyntheticSet((8, 8), num_classes=3)
    with pytest.raises(ValueError, match="image_shape"):
        syn.SyntheticSet((8, 8.5, 1), num_classes=3)  # was truncated to (8, 8, 1)
    x, y = toy_data(n_per_class=2)
    with pytest.raises(ValueError, match="fewer than images_per_class"):
        syn.SyntheticSet(SHAPE, num_classes=3, images_per_class=3).initialize_from(x, y)
    with pytest.raises(ValueError, match="labels must lie in"):
        syn.SyntheticSet(SHAPE, num_classes=2).initialize_from(x, y)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        syn.SyntheticSet(SHAPE, num_classes=3).initialize_from(x, y[:5])
    synthetic = syn.SyntheticSet(SHAPE, num_classes=3)
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        syn.distill_distribution_matching(synthetic, x, y, iterations=0)
    with pytest.raises(ValueError, match="real_per_class"):
        syn.distill_gradient_matching(synthetic, x, y, iterations=1, real_per_class=0)
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
    with pytest.raises(ValueError, match="needs \\(images, groups\\)"):
        model = syn.ContrastiveEncoder(SHAPE, width=4, depth=2)
        model.build()
        model.compute_loss(x, None)
