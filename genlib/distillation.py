"""Dataset distillation, all three families (Yu et al.'s taxonomy), one method or two each.

Chapter 16 (chapters/16_synthetic_data.ipynb). Distillation optimises a handful of synthetic
images per class (a ``SyntheticSet``) so that a network trained on them alone does well on
real test data.

* **performance matching**, kernel inducing points (Nguyen et al. 2021): ``random_features``,
  ``kernel_ridge_predict``, ``kip_loss``, ``distill_kip``;
* **parameter matching**: gradient matching (Zhao et al. 2021; ``weight_gradients``,
  ``gradient_matching_distance``, ``distill_gradient_matching``) and matching training
  trajectories (Cazenavette et al. 2022; ``expert_trajectory``, ``student_trajectory``,
  ``trajectory_matching_loss``, ``distill_trajectory_matching``);
* **distribution matching** (Zhao & Bilen 2023): ``distill_distribution_matching``.

The network, the evaluation protocol and the k-centre baseline live in ``genlib.synthetic``.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
from keras import ops

from genlib import _util
from genlib.synthetic import build_convnet, check_labelled, embedding_model, reinitialize


def _mean_cross_entropy(labels, logits):
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def _unflatten(model, flat):
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    ends = [int(e) for e in np.cumsum([int(np.prod(s)) for s in shapes])]
    return [ops.reshape(part, s) for part, s in zip(ops.split(flat, ends[:-1]), shapes)]


def flat_loss(convnet: keras.Model, images, labels):
    """``convnet``'s mean cross-entropy on (images, labels) as a pure function of one flat weight vector.

    ``stateless_call`` runs the network on the given weight values instead of its variables, so
    the function can be differentiated by ``_util.input_gradient`` and its gradient differentiated
    again: the second derivatives of gradient and trajectory matching, on every backend.
    """

    def loss_of(flat):
        fixed = [v.value for v in convnet.non_trainable_variables]
        logits, _ = convnet.stateless_call(_unflatten(convnet, flat), fixed, images, training=True)
        return _mean_cross_entropy(labels, logits)

    return loss_of


def weight_gradients(convnet: keras.Model, images, labels) -> list:
    """The mean cross-entropy's gradients w.r.t. ``convnet``'s trainable weights, differentiable w.r.t. ``images``.

    Gradient matching differentiates the synthetic images' gradient once more. ``_util.value_and_grad``
    returns final gradients (PyTorch keeps no graph of them), so the loss is written as a function
    of one flat weight vector (``flat_loss``) and differentiated by ``_util.input_gradient``, whose
    result stays differentiable on every backend. Shapes: images (batch, H, W, C), labels (batch,)
    int; returns one tensor per weight of ``convnet.trainable_variables``, of its weight's shape.
    """
    flat = ops.concatenate([ops.reshape(v.value, (-1,)) for v in convnet.trainable_variables])
    return _unflatten(convnet, _util.input_gradient(flat_loss(convnet, images, labels), flat))


# ---------------------------------------------------------------------------
# Matching distances


def gradient_matching_distance(real_grads, syn_grads):
    """Zhao et al.'s layer-wise distance between two lists of gradients of the same weights.

    Each weight's gradient is reshaped to (outputs, rest): one row per output unit (a conv
    filter, a dense unit); the distance is the sum over rows of ``1 - cos(row_real, row_syn)``.
    Vectors (biases, norm scales) are skipped, as in the paper. Zero when the gradients are
    equal (up to a positive scale per row), at most 2 per row.
    """
    if len(real_grads) != len(syn_grads):
        raise ValueError(f"need one gradient per weight in both lists, got {len(real_grads)} and {len(syn_grads)}.")
    total = 0.0
    for gr, gs in zip(real_grads, syn_grads):
        if len(gr.shape) < 2:
            continue
        # Conv kernels are (kh, kw, in, out) and dense kernels (in, out): the output axis is last.
        gr = ops.transpose(ops.reshape(gr, (-1, gr.shape[-1])))
        gs = ops.transpose(ops.reshape(gs, (-1, gs.shape[-1])))
        # A floor, not an added epsilon: small gradients would otherwise never reach distance 0.
        cos = ops.sum(gr * gs, axis=1) / ops.maximum(ops.norm(gr, axis=1) * ops.norm(gs, axis=1), 1e-12)
        total = total + ops.sum(1.0 - cos)
    return total


def distribution_matching_distance(real_embeddings, syn_embeddings):
    """``sum_l || mean_i phi_l(real_i) - mean_j phi_l(syn_j) ||^2``: the squared distance of mean embeddings.

    Each argument is one tensor (batch, ...) or a list of them (one per layer l); the batch
    axis is averaged, the rest flattened. The two batches may have different sizes.
    """
    real = real_embeddings if isinstance(real_embeddings, (list, tuple)) else [real_embeddings]
    syn = syn_embeddings if isinstance(syn_embeddings, (list, tuple)) else [syn_embeddings]
    if len(real) != len(syn):
        raise ValueError(f"need as many real as synthetic embeddings, got {len(real)} and {len(syn)}.")
    total = 0.0
    for r, s in zip(real, syn):
        r = ops.mean(ops.reshape(r, (ops.shape(r)[0], -1)), axis=0)
        s = ops.mean(ops.reshape(s, (ops.shape(s)[0], -1)), axis=0)
        total = total + ops.sum(ops.square(r - s))
    return total


# ---------------------------------------------------------------------------
# The synthetic set


@keras.saving.register_keras_serializable(package="genlib")
class SyntheticSet(keras.layers.Layer):
    """A distilled dataset: ``images_per_class`` trainable images for each of ``num_classes`` classes.

    Args:
        image_shape: (H, W, C).
        num_classes: number of classes; the labels are ``0, 0, ..., 1, 1, ...`` (class-major).
        images_per_class: how many synthetic images each class gets (IPC), >= 1.
        seed: seed of the noise initialisation.

    The images are one weight of shape (num_classes * images_per_class, H, W, C), started
    as Gaussian noise; ``initialize_from(x, y)`` replaces them by random real images of the
    right classes. ``call(indices)`` looks images up: (batch,) int -> (batch, H, W, C).
    """

    def __init__(self, image_shape=(16, 16, 1), num_classes: int = 10, images_per_class: int = 1, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.image_shape = _util.shape("image_shape", image_shape, rank=3)
        self.num_classes = _util.positive_int("num_classes", num_classes, 2)
        self.images_per_class = _util.positive_int("images_per_class", images_per_class)
        self.seed = seed
        self.images = self.add_weight(name="images", shape=(self.num_classes * self.images_per_class,
                                                            *self.image_shape),
                                      initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed))

    @property
    def labels(self) -> np.ndarray:
        """(num_classes * images_per_class,) int32 labels, class-major."""
        return np.repeat(np.arange(self.num_classes, dtype="int32"), self.images_per_class)

    def initialize_from(self, x, y, seed: int = 0) -> SyntheticSet:
        """Start from ``images_per_class`` real images of each class, drawn at random with ``seed``."""
        x, y = check_labelled(x, y, self.num_classes)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))}), got {x.shape}.")
        rng = np.random.default_rng(seed)
        picks = []
        for c in range(self.num_classes):
            idx = np.flatnonzero(y == c)
            if len(idx) < self.images_per_class:
                raise ValueError(f"class {c} has {len(idx)} images, fewer than images_per_class="
                                 f"{self.images_per_class}.")
            picks.append(rng.choice(idx, self.images_per_class, replace=False))
        self.images.assign(x[np.concatenate(picks)])
        return self

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """The set as NumPy arrays (images, labels), ready for ``fit``."""
        return ops.convert_to_numpy(self.images), self.labels

    def call(self, indices):
        return ops.take(self.images, ops.cast(indices, "int32"), axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, *self.image_shape)

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "images_per_class": self.images_per_class, "seed": self.seed}


def _class_batches(y, num_classes, per_class):
    """A function ``rng -> indices``: ``per_class`` random rows of each class, class-major."""
    pools = [np.flatnonzero(y == c) for c in range(num_classes)]
    if min(len(p) for p in pools) == 0:
        raise ValueError("every class needs at least one real image.")
    return lambda rng: np.concatenate([rng.choice(p, per_class, replace=len(p) < per_class) for p in pools])


def _descend(loss_fn, synthetic, optimizer, clip):
    """One ``optimizer`` step on the synthetic images down ``loss_fn()``, then clip them into ``clip``."""
    loss, _, (grad,) = _util.value_and_grad(loss_fn, [synthetic.images])
    optimizer.apply([grad], [synthetic.images])
    if clip is not None:
        synthetic.images.assign(ops.clip(synthetic.images, clip[0], clip[1]))
    return loss


def _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress, reinit=True):
    """The loop both methods share: a fresh network and a class-balanced real batch per iteration."""
    iterations = _util.positive_int("iterations", iterations)
    real_per_class = _util.positive_int("real_per_class", real_per_class)
    x_real, y_real = check_labelled(x_real, y_real, synthetic.num_classes)
    draw = _class_batches(y_real, synthetic.num_classes, real_per_class)
    rng = np.random.default_rng(seed)
    losses = []
    with _util.Progress(iterations, enabled=progress, unit="iteration", label="distillation") as bar:
        for it in range(iterations):
            if reinit:
                reinitialize(convnet, seed=int(rng.integers(2**31)))
            losses.append(float(ops.convert_to_numpy(step(ops.convert_to_tensor(x_real[draw(rng)])))))
            bar.update(it + 1, {"matching_loss": losses[-1]})
    return {"loss": losses}


def _sgd_step(convnet: keras.Model, learning_rate: float):
    """A compiled plain-SGD step of ``convnet`` down its cross-entropy: ``step(images, labels)``."""
    weights = convnet.trainable_variables

    def step(images, labels):
        _, _, grads = _util.value_and_grad(lambda: _mean_cross_entropy(labels, convnet(images, training=True)),
                                           weights)
        for w, g in zip(weights, grads):
            w.assign_sub(learning_rate * g)
        return 0.0

    return _util.compile_step(step, state=convnet.variables)


_GM_FUNCTIONS = weakref.WeakKeyDictionary()  # convnet -> {network learning rate: compiled functions}


def gradient_matching_functions(convnet: keras.Model, network_learning_rate: float):
    """Gradient matching's two compiled steps for ``convnet``: ``(class_match, network_step)``.

    ``class_match(real_c, syn_c, c) -> (D_c, dD_c/dsyn_c)`` for the real and synthetic images
    of class ``c`` (an int32 scalar); ``network_step(images, labels)`` takes one SGD step of
    ``convnet`` on the synthetic set. Compiled once per network and kept: compiling the
    second-order step costs seconds, so a second distillation (or a measurement) with the
    same network reuses it.
    """
    cache = _GM_FUNCTIONS.setdefault(convnet, {})
    if network_learning_rate in cache:
        return cache[network_learning_rate]
    weights = convnet.trainable_variables  # the distance compares the kernels among them

    def cross_entropy(images, labels):
        return _mean_cross_entropy(labels, convnet(images, training=True))

    def class_match(real_c, syn_c, c):
        # D_c depends on class c's synthetic images only, so each class's share of the image
        # gradient is computed on its own: one compiled function serves all classes.
        labels_real = ops.full((ops.shape(real_c)[0],), c, dtype="int32")
        labels_syn = ops.full((ops.shape(syn_c)[0],), c, dtype="int32")
        # The target: the network's gradient on real images of class c, a constant.
        _, _, g_real = _util.value_and_grad(lambda: cross_entropy(real_c, labels_real), weights)
        g_real = [ops.stop_gradient(g) for g in g_real]

        def distance(syn_c):
            return gradient_matching_distance(g_real, weight_gradients(convnet, syn_c, labels_syn))

        # dD/dsyn_c goes through the synthetic images' gradient: a second derivative.
        return distance(syn_c), _util.input_gradient(distance, syn_c)

    # JAX: the weights are inputs of the compiled steps, not constants.
    cache[network_learning_rate] = (_util.compile_step(class_match, state=convnet.variables),
                                    _sgd_step(convnet, network_learning_rate))
    return cache[network_learning_rate]


def distill_gradient_matching(synthetic: SyntheticSet, x_real, y_real, iterations: int = 100,
                              real_per_class: int = 64, learning_rate: float = 0.1, matches_per_network: int = 1,
                              network_steps: int = 0, network_learning_rate: float = 0.01, convnet=None,
                              clip=(-1.0, 1.0), seed: int = 0, progress=None,
                              redraw_network: bool = True) -> dict:
    """Dataset condensation by gradient matching (Zhao, Mopuri & Bilen 2021).

    Each iteration draws a fresh random ConvNet theta; then ``matches_per_network`` times:
    for every class c, compute the cross-entropy gradients ``g_real_c`` (on ``real_per_class``
    real images of c) and ``g_syn_c`` (on the synthetic images of c), take one SGD step
    (momentum 0.5) on the synthetic images down ``sum_c D(g_real_c, g_syn_c)``, then train
    theta on the synthetic set for ``network_steps`` SGD steps, so later matches happen
    along a training trajectory (the paper's inner loop: 1 match and 0 steps at 1 image per
    class, 10 matches and 50 steps at 10).

    Args:
        synthetic: the ``SyntheticSet`` to optimise (in place).
        x_real, y_real: real images (N, H, W, C) and labels (N,).
        convnet: the network to draw (default ``build_convnet`` for the image shape).
        clip: keep the images in this range after each step (None: no clipping).
        progress: show a progress bar over the iterations (None: shown except under ``smoke``).
        redraw_network: draw a fresh network every iteration (the method); False keeps the
            network as it is, which turns the loop into plain minimisation of one loss.

    Returns {"loss": [matching loss per iteration (its first match)]}.
    """
    convnet = convnet or build_convnet(synthetic.image_shape, synthetic.num_classes)
    matches = _util.positive_int("matches_per_network", matches_per_network)
    network_steps = _util.positive_int("network_steps", network_steps, 0)
    optimizer = keras.optimizers.SGD(_util.number("learning_rate", learning_rate, 0.0), momentum=0.5)
    optimizer.build([synthetic.images])
    ncls, ipc = synthetic.num_classes, synthetic.images_per_class

    class_match, network_step = gradient_matching_functions(convnet, network_learning_rate)
    labels = ops.convert_to_tensor(synthetic.labels)

    def step(x_real):
        real = ops.reshape(x_real, (ncls, -1, *synthetic.image_shape))
        first = None
        for m in range(matches):
            syn = ops.reshape(ops.stop_gradient(synthetic.images.value), (ncls, ipc, *synthetic.image_shape))
            results = [class_match(real[c], syn[c], ops.convert_to_tensor(c, "int32")) for c in range(ncls)]
            grad = ops.concatenate([g for _, g in results], axis=0)
            optimizer.apply([grad], [synthetic.images])
            if clip is not None:
                synthetic.images.assign(ops.clip(synthetic.images, clip[0], clip[1]))
            first = sum(float(ops.convert_to_numpy(loss)) for loss, _ in results) if first is None else first
            if m + 1 < matches:  # after the last match the next iteration draws a new network anyway
                images = ops.stop_gradient(synthetic.images.value)
                for _ in range(network_steps):
                    network_step(images, labels)
        return first

    return _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress,
                    redraw_network)


def distill_distribution_matching(synthetic: SyntheticSet, x_real, y_real, iterations: int = 100,
                                  real_per_class: int = 64, learning_rate: float = 1.0, multi_layer: bool = False,
                                  convnet=None, clip=(-1.0, 1.0), seed: int = 0, progress=None,
                                  redraw_network: bool = True) -> dict:
    """Dataset condensation by distribution matching (Zhao & Bilen 2023).

    Each iteration draws a fresh random ConvNet (embedding ``phi``: the last block, or every
    block with ``multi_layer``) and takes one SGD step (momentum 0.5) on the synthetic images down
    ``sum_c distribution_matching_distance(phi(real_c), phi(syn_c))``: no network is trained, no
    second derivative. Arguments as for ``distill_gradient_matching``; returns {"loss": [per iteration]}.
    """
    convnet = convnet or build_convnet(synthetic.image_shape, synthetic.num_classes)
    embed = embedding_model(convnet, multi_layer)
    optimizer = keras.optimizers.SGD(_util.number("learning_rate", learning_rate, 0.0), momentum=0.5)
    optimizer.build([synthetic.images])
    ncls = synthetic.num_classes

    def by_class(features):
        features = features if isinstance(features, (list, tuple)) else [features]
        return [ops.reshape(f, (ncls, -1, *f.shape[1:])) for f in features]

    def step(x_real):
        real = [ops.stop_gradient(f) for f in by_class(embed(x_real, training=True))]

        def loss_fn():
            syn = by_class(embed(synthetic.images, training=True))
            return sum(distribution_matching_distance([r[c] for r in real], [s[c] for s in syn]) for c in range(ncls))

        return _descend(loss_fn, synthetic, optimizer, clip)

    # JAX: everything the step reads or writes goes in and out of the compiled function.
    step = _util.compile_step(step, state=[*convnet.variables, synthetic.images, *optimizer.variables])
    return _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress,
                    redraw_network)


# ---------------------------------------------------------------------------
# Performance matching: kernel inducing points (KIP)


def random_features(convnet: keras.Model, images, training: bool = True):
    """The features of a (random) ConvNet-D that define KIP's kernel: every block's output, flattened and joined.

    ``k(x, x') = phi(x) . phi(x') / D`` with these features is a Monte Carlo estimate of the
    network's NNGP kernel (the kernel of an infinitely wide random network) for this one draw.
    Shapes: (batch, H, W, C) -> (batch, D).
    """
    blocks = [layer for layer in convnet.layers if layer.name.startswith("block_")]
    h, feats = images, []
    for layer in convnet.layers[1:]:
        h = layer(h, training=training)
        if layer in blocks:
            feats.append(ops.reshape(h, (ops.shape(h)[0], -1)))
        if layer is blocks[-1]:
            break
    return ops.concatenate(feats, axis=1)


def kernel_ridge_predict(k_query_support, k_support, y_support, regularization: float = 1e-3):
    """Kernel ridge regression in closed form: ``K_qs (K_ss + lambda I)^{-1} Y_s``.

    ``lambda = regularization * trace(K_ss) / n``: relative to the kernel's scale, as in KIP.
    Shapes: k_query_support (q, n), k_support (n, n), y_support (n, k) -> (q, k).
    """
    regularization = _util.number("regularization", regularization, 0.0)
    k_query_support, k_support, y_support = (ops.convert_to_tensor(a, "float32")
                                             for a in (k_query_support, k_support, y_support))
    n = ops.shape(k_support)[0]
    lam = regularization * ops.trace(k_support) / ops.cast(n, k_support.dtype)
    alpha = ops.solve(k_support + lam * ops.eye(n, dtype=k_support.dtype), y_support)
    return ops.matmul(k_query_support, alpha)


def kip_loss(target_features, y_target, support_features, y_support, regularization: float = 1e-3):
    """KIP's loss (Nguyen et al. 2021): how well kernel ridge regression fit on the support set predicts the target.

    ``k(a, b) = phi(a) . phi(b) / D``; the prediction for the target batch is
    ``kernel_ridge_predict(K_ts, K_ss, Y_s)`` and the loss is ``0.5 * mean_i ||pred_i - Y_t,i||^2``.
    Training the "network" (the regression) is a linear solve, so the loss is a closed-form,
    differentiable function of the support (synthetic) images: performance matching with no unrolling.

    Shapes: features (q, D) and (n, D); labels as targets (q, k) and (n, k) (e.g. centred one-hot).
    """
    target_features, y_target, support_features = (ops.convert_to_tensor(a, "float32")
                                                   for a in (target_features, y_target, support_features))
    d = ops.cast(ops.shape(support_features)[1], support_features.dtype)
    k_ss = ops.matmul(support_features, ops.transpose(support_features)) / d
    k_ts = ops.matmul(target_features, ops.transpose(support_features)) / d
    pred = kernel_ridge_predict(k_ts, k_ss, y_support, regularization)
    return 0.5 * ops.mean(ops.sum(ops.square(pred - y_target), axis=1))


def centred_one_hot(labels, num_classes: int) -> np.ndarray:
    """KIP's regression targets: one-hot minus 1/C, so a constant prediction scores zero."""
    return (np.eye(num_classes, dtype="float32")[np.asarray(labels)] - 1.0 / num_classes).astype("float32")


def distill_kip(synthetic: SyntheticSet, x_real, y_real, iterations: int = 100, real_per_class: int = 64,
                learning_rate: float = 0.01, regularization: float = 1e-3, convnet=None, clip=(-1.0, 1.0),
                seed: int = 0, progress=None, redraw_network: bool = True) -> dict:
    """Dataset distillation by kernel inducing points, with a random ConvNet's feature kernel.

    Each iteration draws a fresh random ConvNet (its features ``random_features``: a new
    kernel), a class-balanced batch of real images as the target, and takes one Adam step on
    the synthetic images down ``kip_loss`` (kernel ridge regression fit on the synthetic set,
    scored on the real batch). Averaging over draws approximates the network's expected kernel.

    Arguments as for ``distill_gradient_matching``. Returns {"loss": [per iteration]}.
    """
    convnet = convnet or build_convnet(synthetic.image_shape, synthetic.num_classes)
    optimizer = keras.optimizers.Adam(_util.number("learning_rate", learning_rate, 0.0))
    optimizer.build([synthetic.images])
    regularization = _util.number("regularization", regularization, 0.0)
    ncls = synthetic.num_classes
    y_support = ops.convert_to_tensor(centred_one_hot(synthetic.labels, ncls))
    per = _util.positive_int("real_per_class", real_per_class)
    y_target = ops.convert_to_tensor(centred_one_hot(np.repeat(np.arange(ncls), per), ncls))

    def step(x_real):
        target = ops.stop_gradient(random_features(convnet, x_real))

        def loss_fn():
            return kip_loss(target, y_target, random_features(convnet, synthetic.images), y_support, regularization)

        return _descend(loss_fn, synthetic, optimizer, clip)

    step = _util.compile_step(step, state=[*convnet.variables, synthetic.images, *optimizer.variables])
    return _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress,
                    redraw_network)


# ---------------------------------------------------------------------------
# Parameter matching over many steps: matching training trajectories (MTT)


def flat_weights(model: keras.Model) -> np.ndarray:
    """``model``'s trainable weights as one float32 vector (the order of ``trainable_variables``)."""
    return np.concatenate([ops.convert_to_numpy(v).reshape(-1) for v in model.trainable_variables]).astype("float32")


def set_flat_weights(model: keras.Model, flat) -> keras.Model:
    """Load a vector from ``flat_weights`` (e.g. an expert's checkpoint) into ``model``'s trainable weights."""
    flat = np.asarray(flat, "float32").reshape(-1)
    if len(flat) != (n := sum(int(np.prod(v.shape)) for v in model.trainable_variables)):
        raise ValueError(f"this model has {n} trainable weights, got a vector of {len(flat)}.")
    for v, value in zip(model.trainable_variables, _unflatten(model, flat)):
        v.assign(value)
    return model


def expert_trajectory(convnet: keras.Model, x, y, checkpoints: int = 10, steps_per_checkpoint: int = 20,
                      learning_rate: float = 0.01, batch_size: int = 128, seed: int = 0) -> np.ndarray:
    """Train ``convnet`` (redrawn from ``seed``) on real data with plain SGD, saving its weights along the way.

    The experts of trajectory matching: ``checkpoints`` segments of ``steps_per_checkpoint``
    SGD steps (no momentum, as in Cazenavette et al., so a student can follow with the same
    update rule). Returns (checkpoints + 1, P): the flat weights at the start and after each segment.
    """
    x, y = check_labelled(x, y, convnet.output_shape[-1])
    checkpoints = _util.positive_int("checkpoints", checkpoints)
    steps = _util.positive_int("steps_per_checkpoint", steps_per_checkpoint)
    batch_size = min(_util.positive_int("batch_size", batch_size), len(x))
    reinitialize(convnet, seed)
    sgd_step = _sgd_step(convnet, _util.number("learning_rate", learning_rate, 0.0, low_open=True))
    rng = np.random.default_rng(seed)
    saved = [flat_weights(convnet)]
    for _ in range(checkpoints):
        for _ in range(steps):
            idx = rng.choice(len(x), batch_size, replace=False)
            sgd_step(ops.convert_to_tensor(x[idx]), ops.convert_to_tensor(y[idx]))
        saved.append(flat_weights(convnet))
    return np.stack(saved)


def trajectory_matching_loss(student_end, expert_start, expert_target):
    """MTT's normalised parameter distance: ``||theta_hat - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2``.

    0 when the student lands on the expert's later checkpoint, 1 when it has not moved from
    the start; the normaliser makes checkpoints late in training (where experts move little)
    count as much as early ones. Shapes: three (P,) vectors.
    """
    return ops.sum(ops.square(student_end - expert_target)) / ops.maximum(
        ops.sum(ops.square(expert_start - expert_target)), 1e-12)


def student_trajectory(convnet: keras.Model, start, images, labels, learning_rate, steps: int):
    """``steps`` SGD steps of ``convnet`` from the flat weights ``start`` on (images, labels), full batch.

    Written with ``stateless_call`` on weight values and ``_util.input_gradient`` for each
    step's gradient, so the end point stays differentiable w.r.t. ``images`` and
    ``learning_rate``: the unrolled inner loop that trajectory matching backpropagates
    through. Returns the flat weights after the last step, (P,).
    """
    steps = _util.positive_int("steps", steps)
    loss_of = flat_loss(convnet, images, labels)
    theta = start
    for _ in range(steps):
        theta = theta - learning_rate * _util.input_gradient(loss_of, theta)
    return theta


def distill_trajectory_matching(synthetic: SyntheticSet, trajectories, iterations: int = 100,
                                student_steps: int = 10, expert_segments: int = 2, max_start: int | None = None,
                                learning_rate: float = 0.01, lr_learning_rate: float = 0.01,
                                initial_student_lr: float = 0.01, convnet=None, clip=(-1.0, 1.0), seed: int = 0,
                                progress=None) -> dict:
    """Dataset distillation by matching training trajectories (Cazenavette et al. 2022).

    Each iteration picks an expert (one array of ``trajectories``, from ``expert_trajectory``)
    and a start checkpoint ``t <= max_start``; the student starts at ``theta*_t``, takes
    ``student_steps`` full-batch SGD steps on the synthetic set with the learnable rate
    ``student_lr``, and the synthetic images and ``log(student_lr)`` take an Adam step down
    ``trajectory_matching_loss(theta_hat, theta*_t, theta*_{t+expert_segments})``: the
    gradient flows back through every student step (second derivatives).

    Args:
        synthetic: the ``SyntheticSet`` to optimise (in place).
        trajectories: a list of (checkpoints + 1, P) expert trajectories of ``convnet``'s architecture.
        student_steps: N, the unrolled student steps (memory and time grow with it).
        expert_segments: M, how many checkpoints ahead the target lies.
        max_start: the latest start checkpoint (default: the last one that leaves M ahead).
        learning_rate, lr_learning_rate: Adam's rates for the images and for log(student_lr).
        initial_student_lr: where the learnable student rate starts.

    Returns {"loss": [per iteration], "student_lr": [per iteration]}.
    """
    convnet = convnet or build_convnet(synthetic.image_shape, synthetic.num_classes)
    trajectories = [np.asarray(t, "float32") for t in trajectories]
    if not trajectories:
        raise ValueError("give at least one expert trajectory.")
    n_params = sum(int(np.prod(v.shape)) for v in convnet.trainable_variables)
    if any(t.ndim != 2 or t.shape[1] != n_params for t in trajectories):
        raise ValueError(f"each trajectory must be (checkpoints + 1, {n_params}) for this network, got "
                         f"{[t.shape for t in trajectories]}.")
    segments = _util.positive_int("expert_segments", expert_segments)
    last = min(len(t) for t in trajectories) - 1 - segments
    if last < 0:
        raise ValueError(f"expert_segments={segments} needs trajectories of more than {segments} checkpoints.")
    max_start = last if max_start is None else min(_util.positive_int("max_start", max_start, 0), last)
    iterations = _util.positive_int("iterations", iterations)
    student_steps = _util.positive_int("student_steps", student_steps)
    log_lr = keras.Variable(np.log(_util.number("initial_student_lr", initial_student_lr, 0.0, low_open=True)),
                            dtype="float32", name="log_student_lr")
    image_opt = keras.optimizers.Adam(_util.number("learning_rate", learning_rate, 0.0))
    lr_opt = keras.optimizers.Adam(_util.number("lr_learning_rate", lr_learning_rate, 0.0))
    image_opt.build([synthetic.images])
    lr_opt.build([log_lr])
    labels = ops.convert_to_tensor(synthetic.labels)

    def step(start, target):
        def loss_fn():
            end = student_trajectory(convnet, start, synthetic.images.value, labels, ops.exp(log_lr.value),
                                     student_steps)
            return trajectory_matching_loss(end, start, target)

        # The outer gradient runs back through every student step, each itself a gradient.
        loss, _, (g_images, g_lr) = _util.value_and_grad(loss_fn, [synthetic.images, log_lr])
        image_opt.apply([g_images], [synthetic.images])
        lr_opt.apply([g_lr], [log_lr])
        if clip is not None:
            synthetic.images.assign(ops.clip(synthetic.images, clip[0], clip[1]))
        return loss

    step = _util.compile_step(step, state=[synthetic.images, log_lr, *image_opt.variables, *lr_opt.variables])
    rng = np.random.default_rng(seed)
    losses, rates = [], []
    with _util.Progress(iterations, enabled=progress, unit="iteration", label="trajectory matching") as bar:
        for it in range(iterations):
            expert = trajectories[int(rng.integers(len(trajectories)))]
            t = int(rng.integers(max_start + 1))
            losses.append(float(ops.convert_to_numpy(step(ops.convert_to_tensor(expert[t]),
                                                          ops.convert_to_tensor(expert[t + segments])))))
            rates.append(float(np.exp(ops.convert_to_numpy(log_lr))))
            bar.update(it + 1, {"matching_loss": losses[-1]})
    return {"loss": losses, "student_lr": rates}
