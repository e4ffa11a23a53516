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
# Performance matching: KIP


def test_kernel_ridge_and_kip_loss_equal_scikit_learn():
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=(9, 5)).astype("float32")
    y_s = syn.centred_one_hot([0, 1, 2, 0, 1, 2], 3)
    y_t = syn.centred_one_hot(rng.integers(0, 3, 9), 3)
    k_ss, k_ts = f_s @ f_s.T / 5, f_t @ f_s.T / 5
    reg = 0.1
    ridge = KernelRidge(alpha=reg * np.trace(k_ss) / 6, kernel="precomputed").fit(k_ss.astype("float64"), y_s)
    expected = ridge.predict(k_ts.astype("float64"))
    got = ops.convert_to_numpy(syn.kernel_ridge_predict(k_ts, k_ss, y_s, reg))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    loss = float(ops.convert_to_numpy(syn.kip_loss(f_t, y_t, f_s, y_s, reg)))
    assert loss == pytest.approx(0.5 * np.mean(np.sum((expected - y_t) ** 2, axis=1)), rel=1e-3)


def test_kip_loss_is_zero_when_the_support_is_the_target_without_regularisation():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(4, 10)).astype("float32")  # 4 points in 10 dims: K is invertible
    y = syn.centred_one_hot([0, 1, 0, 1], 2)
    assert float(ops.convert_to_numpy(syn.kip_loss(f, y, f, y, 0.0))) == pytest.approx(0.0, abs=1e-4)


def test_kip_distillation_lowers_its_loss_and_changes_images():
    x, y = toy_data(n_per_class=8)
    s = syn.SyntheticSet(SHAPE, 3, 1, seed=0).initialize_from(x, y, seed=0)
    start = s.numpy()[0].copy()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    h = syn.distill_kip(s, x, y, iterations=25, real_per_class=8, learning_rate=0.05, convnet=net, progress=False,
                        redraw_network=False)
    assert h["loss"][-1] < h["loss"][0]
    assert not np.allclose(s.numpy()[0], start)


# ---------------------------------------------------------------------------
# Parameter matching over many steps: MTT


def test_trajectory_matching_loss_is_normalised():
    rng = np.random.default_rng(0)
    start, target = rng.normal(size=7).astype("float32"), rng.normal(size=7).astype("float32")
    assert float(syn.trajectory_matching_loss(target, start, target)) == pytest.approx(0.0, abs=1e-7)
    assert float(syn.trajectory_matching_loss(start, start, target)) == pytest.approx(1.0, rel=1e-6)
    mid = 0.5 * (start + target)
    assert float(syn.trajectory_matching_loss(mid, start, target)) == pytest.approx(0.25, rel=1e-5)


def test_student_trajectory_equals_plain_sgd_and_matching_its_end_gives_zero():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    syn.reinitialize(net, 0)
    start = syn.flat_weights(net)
    end = ops.convert_to_numpy(syn.student_trajectory(net, ops.convert_to_tensor(start), x, y, 0.1, steps=3))
    weights = net.trainable_variables
    for _ in range(3):  # the same three steps, by the ordinary gradient
        _, _, grads = _util.value_and_grad(lambda: ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, net(x, training=True), from_logits=True)), weights)
        for w, g in zip(weights, grads):
            w.assign(w - 0.1 * g)
    np.testing.assert_allclose(end, syn.flat_weights(net), atol=1e-4)
    # The student reaches the expert's target exactly when the target is where it ends: loss 0.
    assert float(syn.trajectory_matching_loss(end, start, end)) == pytest.approx(0.0, abs=1e-7)


def test_trajectory_matching_gradient_reaches_images_and_learning_rate():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    traj = syn.expert_trajectory(net, x, y, checkpoints=2, steps_per_checkpoint=3, learning_rate=0.1,
                                 batch_size=6, seed=0)
    assert traj.shape == (3, len(syn.flat_weights(net)))
    assert not np.allclose(traj[0], traj[1])
    images = keras.Variable(x[[0, 4, 8]])
    log_lr = keras.Variable(np.log(0.05).astype("float32"))
    labels = np.array([0, 1, 2], "int32")
    start, target = ops.convert_to_tensor(traj[0]), ops.convert_to_tensor(traj[1])

    def loss_fn():
        end = syn.student_trajectory(net, start, images.value, labels, ops.exp(log_lr.value), steps=2)
        return syn.trajectory_matching_loss(end, start, target)

    _, _, (g_images, g_lr) = _util.value_and_grad(loss_fn, [images, log_lr])
    assert np.abs(ops.convert_to_numpy(g_images)).max() > 0
    assert np.isfinite(ops.convert_to_numpy(g_lr)) and abs(float(ops.convert_to_numpy(g_lr))) > 0


def test_trajectory_matching_distillation_lowers_its_loss():
    x, y = toy_data(n_per_class=8)
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    traj = syn.expert_trajectory(net, x, y, checkpoints=2, steps_per_checkpoint=5, learning_rate=0.1,
                                 batch_size=12, seed=0)
    s = syn.SyntheticSet(SHAPE, 3, 1, seed=0).initialize_from(x, y, seed=0)
    h = syn.distill_trajectory_matching(s, [traj], iterations=15, student_steps=3, expert_segments=1, max_start=0,
                                        learning_rate=0.05, lr_learning_rate=0.05, initial_student_lr=0.05,
                                        convnet=net, progress=False)
    assert h["loss"][-1] < h["loss"][0]
    assert h["student_lr"][-1] != pytest.approx(0.05)


def test_new_blocks_reject_bad_arguments():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    s = syn.SyntheticSet(SHAPE, 3, 1)
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
    with pytest.raises(ValueError, match="regularization"):
        syn.kernel_ridge_predict(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"),
                                 np.eye(2, dtype="float32"), -1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        syn.distill_kip(s, x, y, iterations=1, learning_rate=-1.0, convnet=net)
    with pytest.raises(ValueError, match="trajectory"):
        syn.distill_trajectory_matching(s, [], convnet=net)
    with pytest.raises(ValueError, match="checkpoints"):
        syn.distill_trajectory_matching(s, [np.zeros((2, 5), "float32")], convnet=net)
    traj = np.zeros((2, len(syn.flat_weights(net))), "float32")
    with pytest.raises(ValueError, match="expert_segments"):
        syn.distill_trajectory_matching(s, [traj], expert_segments=2, convnet=net)
    with pytest.raises(ValueError, match="student_steps"):
        syn.distill_trajectory_matching(s, [traj], student_steps=0, expert_segments=1, convnet=net)
    with pytest.raises(ValueError, match="checkpoints"):
        syn.expert_trajectory(net, x, y, checkpoints=0)
