"""Tests of genlib.distillation: matching distances, the three families' loops and losses, the synthetic set.

Backend-neutral: they run under TensorFlow, JAX and PyTorch."""

import keras
import numpy as np
import pytest
from keras import ops
from test_synthetic import SHAPE, toy_data  # the tiny labelled set both files use

from genlib import _util
from genlib import distillation as dist
from genlib import synthetic as syn


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
    assert float(dist.gradient_matching_distance(g_a, g_same)) == pytest.approx(0.0, abs=1e-4)
    assert float(dist.gradient_matching_distance(g_a, g_other)) > 1e-2



def test_gradient_matching_distance_is_per_output_one_minus_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 3, 2, 5)), rng.normal(size=(3, 3, 2, 5))
    bias = rng.normal(size=(5,))
    ra, rb = a.reshape(-1, 5).T, b.reshape(-1, 5).T
    expected = np.sum(1 - np.sum(ra * rb, 1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)))
    got = float(dist.gradient_matching_distance([a.astype("float32"), bias], [b.astype("float32"), -bias]))
    assert got == pytest.approx(expected, rel=1e-4)  # the bias (a vector) is skipped
    # A positive rescaling of one output's gradient does not change the distance.
    scaled = a.copy()
    scaled[..., 2] *= 7.0
    assert float(dist.gradient_matching_distance([a.astype("float32")], [scaled.astype("float32")])) == \
        pytest.approx(0.0, abs=1e-4)



def test_weight_gradients_equal_the_plain_gradients():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    x, _ = toy_data()
    labels = np.zeros(4, "int32")

    def loss():
        logits = net(x[:4], training=True)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    expected = _util.value_and_grad(loss, net.trainable_variables)[2]
    got = dist.weight_gradients(net, ops.convert_to_tensor(x[:4]), ops.convert_to_tensor(labels))
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
        return sum(ops.sum(ops.square(g)) for g in dist.weight_gradients(net, images, labels))

    analytic = ops.convert_to_numpy(_util.input_gradient(f, ops.convert_to_tensor(x)))
    direction = np.random.default_rng(5).normal(size=x.shape).astype("float32")
    h = 1e-2
    value = lambda z: float(ops.convert_to_numpy(f(ops.convert_to_tensor(z.astype("float32")))))  # noqa: E731
    numeric = (value(x + h * direction) - value(x - h * direction)) / (2 * h)
    assert abs(numeric) > 1e-3
    assert float(np.sum(analytic * direction)) == pytest.approx(numeric, rel=0.02)



def test_class_match_returns_the_distance_and_its_image_gradient():
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    class_match, _ = dist.gradient_matching_functions(net, 0.01)
    x, _ = toy_data()
    c = ops.convert_to_tensor(0, "int32")
    loss, grad = class_match(ops.convert_to_tensor(x[:4]), ops.convert_to_tensor(x[4:6]), c)
    expected = float(dist.gradient_matching_distance(class_gradients(net, x[:4], 0), class_gradients(net, x[4:6], 0)))
    assert float(ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-4)
    grad = ops.convert_to_numpy(grad)
    assert grad.shape == x[4:6].shape and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0



def test_distribution_matching_distance_is_squared_difference_of_means():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(7, 3, 2)), rng.normal(size=(4, 3, 2))
    expected = np.sum((real.reshape(7, -1).mean(0) - fake.reshape(4, -1).mean(0)) ** 2)
    assert float(dist.distribution_matching_distance(real, fake)) == pytest.approx(expected, rel=1e-5)
    real2, fake2 = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    both = float(dist.distribution_matching_distance([real, real2], [fake, fake2]))
    assert both == pytest.approx(expected + np.sum((real2.mean(0) - fake2.mean(0)) ** 2), rel=1e-5)
    assert float(dist.distribution_matching_distance(real, real[::-1])) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="as many"):
        dist.distribution_matching_distance([real], [fake, fake])



# ---------------------------------------------------------------------------
# Distillation

@pytest.mark.parametrize("method", ["gradient", "distribution", "distribution_multi"])
def test_distillation_reduces_the_matching_loss_on_a_tiny_problem(method):
    x, y = toy_data(n_per_class=4)
    synthetic = dist.SyntheticSet(SHAPE, num_classes=3, images_per_class=1, seed=0)
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    syn.reinitialize(net, seed=0)
    # A fixed network and every real image in each batch: a deterministic loss that must fall.
    common = dict(iterations=15, real_per_class=4, convnet=net, redraw_network=False, clip=None)
    if method == "gradient":
        history = dist.distill_gradient_matching(synthetic, x, y, learning_rate=0.05, **common)
    else:
        history = dist.distill_distribution_matching(synthetic, x, y, learning_rate=0.5,
                                                    multi_layer=method == "distribution_multi", **common)
    losses = history["loss"]
    assert len(losses) == 15 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses



def test_gradient_matching_inner_loop_trains_the_network():
    x, y = toy_data(n_per_class=4)
    synthetic = dist.SyntheticSet(SHAPE, num_classes=3, images_per_class=2, seed=0).initialize_from(x, y)
    net = syn.build_convnet(SHAPE, num_classes=3, width=4, depth=2)
    syn.reinitialize(net, seed=0)
    before = [w.numpy().copy() for w in net.trainable_weights]
    dist.distill_gradient_matching(synthetic, x, y, iterations=1, real_per_class=2, matches_per_network=2,
                                  network_steps=2, convnet=net, redraw_network=False)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, net.trainable_weights))



def test_synthetic_set_initialisation_labels_and_round_trip(tmp_path):
    x, y = toy_data(n_per_class=4)
    synthetic = dist.SyntheticSet(SHAPE, num_classes=3, images_per_class=2, seed=0).initialize_from(x, y, seed=1)
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



# ---------------------------------------------------------------------------
# Performance matching: KIP

def test_kernel_ridge_and_kip_loss_equal_scikit_learn():
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=(9, 5)).astype("float32")
    y_s = dist.centred_one_hot([0, 1, 2, 0, 1, 2], 3)
    y_t = dist.centred_one_hot(rng.integers(0, 3, 9), 3)
    k_ss, k_ts = f_s @ f_s.T / 5, f_t @ f_s.T / 5
    reg = 0.1
    ridge = KernelRidge(alpha=reg * np.trace(k_ss) / 6, kernel="precomputed").fit(k_ss.astype("float64"), y_s)
    expected = ridge.predict(k_ts.astype("float64"))
    got = ops.convert_to_numpy(dist.kernel_ridge_predict(k_ts, k_ss, y_s, reg))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    loss = float(ops.convert_to_numpy(dist.kip_loss(f_t, y_t, f_s, y_s, reg)))
    assert loss == pytest.approx(0.5 * np.mean(np.sum((expected - y_t) ** 2, axis=1)), rel=1e-3)



def test_kip_loss_is_zero_when_the_support_is_the_target_without_regularisation():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(4, 10)).astype("float32")  # 4 points in 10 dims: K is invertible
    y = dist.centred_one_hot([0, 1, 0, 1], 2)
    assert float(ops.convert_to_numpy(dist.kip_loss(f, y, f, y, 0.0))) == pytest.approx(0.0, abs=1e-4)



def test_kip_distillation_lowers_its_loss_and_changes_images():
    x, y = toy_data(n_per_class=8)
    s = dist.SyntheticSet(SHAPE, 3, 1, seed=0).initialize_from(x, y, seed=0)
    start = s.numpy()[0].copy()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    h = dist.distill_kip(s, x, y, iterations=25, real_per_class=8, learning_rate=0.05, convnet=net, progress=False,
                        redraw_network=False)
    assert h["loss"][-1] < h["loss"][0]
    assert not np.allclose(s.numpy()[0], start)



# ---------------------------------------------------------------------------
# Parameter matching over many steps: MTT

def test_trajectory_matching_loss_is_normalised():
    rng = np.random.default_rng(0)
    start, target = rng.normal(size=7).astype("float32"), rng.normal(size=7).astype("float32")
    assert float(dist.trajectory_matching_loss(target, start, target)) == pytest.approx(0.0, abs=1e-7)
    assert float(dist.trajectory_matching_loss(start, start, target)) == pytest.approx(1.0, rel=1e-6)
    mid = 0.5 * (start + target)
    assert float(dist.trajectory_matching_loss(mid, start, target)) == pytest.approx(0.25, rel=1e-5)



def test_student_trajectory_equals_plain_sgd_and_matching_its_end_gives_zero():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    syn.reinitialize(net, 0)
    start = dist.flat_weights(net)
    end = ops.convert_to_numpy(dist.student_trajectory(net, ops.convert_to_tensor(start), x, y, 0.1, steps=3))
    weights = net.trainable_variables
    for _ in range(3):  # the same three steps, by the ordinary gradient
        _, _, grads = _util.value_and_grad(lambda: ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, net(x, training=True), from_logits=True)), weights)
        for w, g in zip(weights, grads):
            w.assign(w - 0.1 * g)
    np.testing.assert_allclose(end, dist.flat_weights(net), atol=1e-4)
    # The student reaches the expert's target exactly when the target is where it ends: loss 0.
    assert float(dist.trajectory_matching_loss(end, start, end)) == pytest.approx(0.0, abs=1e-7)



def test_trajectory_matching_gradient_reaches_images_and_learning_rate():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    traj = dist.expert_trajectory(net, x, y, checkpoints=2, steps_per_checkpoint=3, learning_rate=0.1,
                                 batch_size=6, seed=0)
    assert traj.shape == (3, len(dist.flat_weights(net)))
    assert not np.allclose(traj[0], traj[1])
    images = keras.Variable(x[[0, 4, 8]])
    log_lr = keras.Variable(np.log(0.05).astype("float32"))
    labels = np.array([0, 1, 2], "int32")
    start, target = ops.convert_to_tensor(traj[0]), ops.convert_to_tensor(traj[1])

    def loss_fn():
        end = dist.student_trajectory(net, start, images.value, labels, ops.exp(log_lr.value), steps=2)
        return dist.trajectory_matching_loss(end, start, target)

    _, _, (g_images, g_lr) = _util.value_and_grad(loss_fn, [images, log_lr])
    assert np.abs(ops.convert_to_numpy(g_images)).max() > 0
    assert np.isfinite(ops.convert_to_numpy(g_lr)) and abs(float(ops.convert_to_numpy(g_lr))) > 0



def test_trajectory_matching_distillation_lowers_its_loss():
    x, y = toy_data(n_per_class=8)
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    traj = dist.expert_trajectory(net, x, y, checkpoints=2, steps_per_checkpoint=5, learning_rate=0.1,
                                 batch_size=12, seed=0)
    s = dist.SyntheticSet(SHAPE, 3, 1, seed=0).initialize_from(x, y, seed=0)
    h = dist.distill_trajectory_matching(s, [traj], iterations=15, student_steps=3, expert_segments=1, max_start=0,
                                        learning_rate=0.05, lr_learning_rate=0.05, initial_student_lr=0.05,
                                        convnet=net, progress=False)
    assert h["loss"][-1] < h["loss"][0]
    assert h["student_lr"][-1] != pytest.approx(0.05)



# ---------------------------------------------------------------------------
# Bad arguments

def test_bad_arguments_give_clear_errors():
    x, y = toy_data(n_per_class=2)
    with pytest.raises(ValueError, match="images_per_class must be an int >= 1, got 0"):
        dist.SyntheticSet(SHAPE, num_classes=3, images_per_class=0)
    with pytest.raises(ValueError, match="image_shape"):
        dist.SyntheticSet((8, 8), num_classes=3)
    with pytest.raises(ValueError, match="image_shape"):
        dist.SyntheticSet((8, 8.5, 1), num_classes=3)  # was truncated to (8, 8, 1)
    with pytest.raises(ValueError, match="fewer than images_per_class"):
        dist.SyntheticSet(SHAPE, num_classes=3, images_per_class=3).initialize_from(x, y)
    with pytest.raises(ValueError, match="labels must lie in"):
        dist.SyntheticSet(SHAPE, num_classes=2).initialize_from(x, y)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        dist.SyntheticSet(SHAPE, num_classes=3).initialize_from(x, y[:5])
    synthetic = dist.SyntheticSet(SHAPE, num_classes=3)
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        dist.distill_distribution_matching(synthetic, x, y, iterations=0)
    with pytest.raises(ValueError, match="real_per_class"):
        dist.distill_gradient_matching(synthetic, x, y, iterations=1, real_per_class=0)


def test_kip_and_trajectory_matching_reject_bad_arguments():
    x, y = toy_data()
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    s = dist.SyntheticSet(SHAPE, 3, 1)
    with pytest.raises(ValueError, match="regularization"):
        dist.kernel_ridge_predict(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"),
                                  np.eye(2, dtype="float32"), -1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        dist.distill_kip(s, x, y, iterations=1, learning_rate=-1.0, convnet=net)
    with pytest.raises(ValueError, match="trajectory"):
        dist.distill_trajectory_matching(s, [], convnet=net)
    with pytest.raises(ValueError, match="checkpoints"):
        dist.distill_trajectory_matching(s, [np.zeros((2, 5), "float32")], convnet=net)
    traj = np.zeros((2, len(dist.flat_weights(net))), "float32")
    with pytest.raises(ValueError, match="expert_segments"):
        dist.distill_trajectory_matching(s, [traj], expert_segments=2, convnet=net)
    with pytest.raises(ValueError, match="student_steps"):
        dist.distill_trajectory_matching(s, [traj], student_steps=0, expert_segments=1, convnet=net)
    with pytest.raises(ValueError, match="checkpoints"):
        dist.expert_trajectory(net, x, y, checkpoints=0)
    with pytest.raises(ValueError, match="trainable weights, got a vector of 5"):
        dist.set_flat_weights(net, np.zeros(5))


def test_set_flat_weights_inverts_flat_weights():
    net = syn.build_convnet(SHAPE, 3, width=4, depth=2)
    syn.reinitialize(net, 1)
    first = dist.flat_weights(net)
    syn.reinitialize(net, 2)
    assert not np.allclose(dist.flat_weights(net), first)
    dist.set_flat_weights(net, first)
    np.testing.assert_array_equal(dist.flat_weights(net), first)
