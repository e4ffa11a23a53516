"""Learning from generated data: dataset distillation, an evaluation protocol, multi-positive contrastive learning.

Chapter 16 (chapters/16_synthetic_data.ipynb). Dataset distillation optimises a handful of
synthetic images per class so that a network trained on them alone does as well as possible
on real test data. Two objectives that avoid unrolling a whole training run:

* **gradient matching** (Zhao et al. 2021): a fresh network's gradient on the synthetic
  images of class ``c`` should point where its gradient on real images of class ``c``
  points; ``gradient_matching_distance`` compares the two, layer by layer and output unit
  by output unit, with ``1 - cos``;
* **distribution matching** (Zhao & Bilen 2023): the mean embedding of the synthetic images
  of class ``c`` under a randomly initialised network should equal that of the real ones;
  ``distribution_matching_distance`` is the squared distance between the means, summed over
  the layers used.

The pieces:

* ``build_convnet``: ConvNet-D, the small classifier of the distillation literature
  (conv 3x3, instance norm, ReLU, average pooling, repeated D times; a linear head).
* ``reinitialize``: draw fresh weights for a network in place (no rebuilding, no retracing).
* ``weight_gradients``: a network's cross-entropy gradients that can be differentiated once
  more with respect to the images (gradient matching's second derivative), on every backend.
* ``SyntheticSet``: the synthetic images (a weight started from real images or noise) and labels.
* ``distill_gradient_matching``, ``distill_distribution_matching``: the two distillation loops
  (``gradient_matching_functions``: gradient matching's compiled per-class step).
* ``ClassifierEvaluator``: the evaluation protocol (fresh ConvNets trained on a set from
  several seeds; real test accuracy, mean and standard deviation).
* ``multi_positive_contrastive_loss`` and ``ContrastiveEncoder``: SynCLR / StableRep's loss
  (all images generated from the same caption or class are positives of each other) and an
  encoder trained with it by ``fit``; ``linear_probe`` scores its features.

Added for the other two families and for SynCLR in miniature:

* **performance matching** by kernel inducing points (Nguyen et al. 2021): ``random_features``
  (a random ConvNet's kernel), ``kernel_ridge_predict`` (the closed form), ``kip_loss``,
  ``distill_kip``;
* **trajectory matching** (Cazenavette et al. 2022): ``expert_trajectory`` (saved expert
  weights), ``student_trajectory`` (unrolled, differentiable student steps through
  ``stateless_call``), ``trajectory_matching_loss`` (normalised parameter distance),
  ``distill_trajectory_matching`` (images and a learnable student learning rate);
* ``Augment`` (random shifts, flips, noise; backend-neutral), ``paired_views`` (SimCLR's two
  views) and ``grouped_order`` (whole caption groups per batch).
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
from keras import layers, ops

from genlib import _util


def _check_labelled(x, y, num_classes):
    x, y = np.asarray(x, "float32"), np.asarray(y).astype("int32").reshape(-1)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {x.shape}.")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}].")
    return x, y


# ---------------------------------------------------------------------------
# The network and fresh random draws of it


def build_convnet(image_shape=(16, 16, 1), num_classes: int = 10, width: int = 32, depth: int = 3,
                  instance_norm: bool = True, name: str = "convnet") -> keras.Model:
    """ConvNet-D: ``depth`` blocks of conv 3x3 (``width``) -> instance norm -> ReLU -> 2x2 average pool; linear head.

    The standard network of dataset distillation (Gidaris & Komodakis 2018; Zhao et al. 2021
    use D = 3, width 128). Instance norm (``GroupNormalization`` with one group per channel)
    has no running statistics, so a network behaves the same on a batch of 10 synthetic
    images as on 256 real ones.

    Shapes: (batch, H, W, C) -> (batch, num_classes) logits. The layers ``block_{i}`` (the
    pooled output of block i) and ``features`` (the flattened last block) give embeddings.
    """
    image_shape = _util.shape("image_shape", image_shape, rank=3)
    if min(image_shape[:2]) < 2 ** _util.positive_int("depth", depth):
        raise ValueError(f"image_shape must be (H, W, C) with H, W >= 2**depth = {2 ** depth}, got {image_shape}.")
    width, num_classes = _util.positive_int("width", width), _util.positive_int("num_classes", num_classes, 2)
    x = keras.Input(image_shape, name="images")
    h = x
    for i in range(depth):
        h = layers.Conv2D(width, 3, padding="same", name=f"conv_{i}")(h)
        if instance_norm:
            h = layers.GroupNormalization(groups=width, epsilon=1e-5, name=f"norm_{i}")(h)
        h = layers.ReLU(name=f"relu_{i}")(h)
        h = layers.AveragePooling2D(2, name=f"block_{i}")(h)
    h = layers.Flatten(name="features")(h)
    return keras.Model(x, layers.Dense(num_classes, name="logits")(h), name=name)


def embedding_model(convnet: keras.Model, multi_layer: bool = False) -> keras.Model:
    """The embedding a ConvNet-D gives: the last block flattened, or (``multi_layer``) every block.

    Returns a model sharing ``convnet``'s weights: (batch, H, W, C) -> (batch, D) or a list
    of (batch, H_i, W_i, width), one per block.
    """
    if multi_layer:
        blocks = [layer.output for layer in convnet.layers if layer.name.startswith("block_")]
        return keras.Model(convnet.input, blocks, name="block_embeddings")
    return keras.Model(convnet.input, convnet.get_layer("features").output, name="embedding")


def reinitialize(model: keras.Model, seed: int) -> None:
    """Draw new weights for ``model`` in place, from each layer's own initialisers, seeded by ``seed``.

    A fresh random network without building a new model: compiled functions that use the
    model keep working and are not traced again.
    """
    for i, layer in enumerate(model.layers):
        for attr in ("kernel", "bias", "gamma", "beta"):
            weight = getattr(layer, attr, None)
            init = getattr(layer, f"{attr}_initializer", None)
            if weight is None or init is None or not hasattr(weight, "assign"):
                continue
            config = init.get_config()
            if "seed" in config:  # seeded initialisers: one distinct stream per layer and weight
                init = init.__class__.from_config({**config, "seed": int(seed) * 1009 + 17 * i + len(attr)})
            weight.assign(init(weight.shape, dtype=weight.dtype))


def _mean_cross_entropy(labels, logits):
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def weight_gradients(convnet: keras.Model, images, labels) -> list:
    """The mean cross-entropy's gradients w.r.t. ``convnet``'s trainable weights, differentiable w.r.t. ``images``.

    Gradient matching differentiates the synthetic images' gradient once more: a second
    derivative. ``_util.value_and_grad`` returns final gradients (PyTorch keeps no graph of
    them), so here the loss is written as a pure function of one vector holding every weight
    (``stateless_call`` runs the network on given weight values) and differentiated by
    ``_util.input_gradient``, whose result stays differentiable on every backend.

    Shapes: images (batch, H, W, C), labels (batch,) int. Returns one tensor per weight of
    ``convnet.trainable_variables``, in that order, each of its weight's shape.
    """
    variables = convnet.trainable_variables
    shapes = [tuple(v.shape) for v in variables]
    ends = [int(e) for e in np.cumsum([int(np.prod(s)) for s in shapes])]

    def unflatten(flat):
        return [ops.reshape(part, s) for part, s in zip(ops.split(flat, ends[:-1]), shapes)]

    def loss_of(flat):
        fixed = [v.value for v in convnet.non_trainable_variables]
        logits, _ = convnet.stateless_call(unflatten(flat), fixed, images, training=True)
        return _mean_cross_entropy(labels, logits)

    flat = ops.concatenate([ops.reshape(v.value, (-1,)) for v in variables])
    return unflatten(_util.input_gradient(loss_of, flat))


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
        x, y = _check_labelled(x, y, self.num_classes)
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


def _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress, reinit=True):
    """The loop both methods share: a fresh network and a class-balanced real batch per iteration."""
    iterations = _util.positive_int("iterations", iterations)
    real_per_class = _util.positive_int("real_per_class", real_per_class)
    x_real, y_real = _check_labelled(x_real, y_real, synthetic.num_classes)
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

    def network_step(images, labels):
        _, _, grads = _util.value_and_grad(lambda: cross_entropy(images, labels), weights)
        for w, g in zip(weights, grads):
            w.assign_sub(network_learning_rate * g)
        return 0.0

    state = convnet.variables  # JAX: the weights are inputs of the compiled steps, not constants
    cache[network_learning_rate] = (_util.compile_step(class_match, state=state),
                                    _util.compile_step(network_step, state=state))
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

    Each iteration draws a fresh random ConvNet (its embedding ``phi``: the last block, or
    every block with ``multi_layer``) and takes one SGD step (momentum 0.5) on the synthetic
    images down ``sum_c distribution_matching_distance(phi(real_c), phi(syn_c))``. No
    network is trained and no second derivative is needed: far cheaper per step than
    gradient matching.

    Arguments as for ``distill_gradient_matching``. Returns {"loss": [per iteration]}.
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

        loss, _, (grad,) = _util.value_and_grad(loss_fn, [synthetic.images])
        optimizer.apply([grad], [synthetic.images])
        if clip is not None:
            synthetic.images.assign(ops.clip(synthetic.images, clip[0], clip[1]))
        return loss

    # JAX: everything the step reads or writes goes in and out of the compiled function.
    step = _util.compile_step(step, state=[*convnet.variables, synthetic.images, *optimizer.variables])
    return _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress,
                    redraw_network)


# ---------------------------------------------------------------------------
# The evaluation protocol


class ClassifierEvaluator:
    """Train a fresh ConvNet-D on a labelled set from several seeds; score it on real test data.

    The protocol of the distillation papers, scaled down: a network drawn from ``seed`` is
    trained from scratch for ``steps`` SGD steps (momentum 0.9, learning rate decayed
    tenfold halfway) on the given set only, then its accuracy on the real test set is
    measured. ``evaluate`` repeats it over seeds and reports mean and standard deviation.
    One network is built and compiled once and re-drawn for every run (``reinitialize``), so
    the runs share one traced training step.

    Args:
        x_test, y_test: the real test set (images in the range the sets use).
        width, depth: the ConvNet-D (see ``build_convnet``).
        steps: optimizer steps per run, whatever the set's size.
        batch_size: the largest batch; a smaller set is used whole at each step.
        learning_rate: the initial SGD learning rate.
    """

    def __init__(self, x_test, y_test, num_classes: int = 10, width: int = 32, depth: int = 3, steps: int = 300,
                 batch_size: int = 256, learning_rate: float = 0.01):
        self.x_test, self.y_test = _check_labelled(x_test, y_test, num_classes)
        self.steps, self.batch_size = _util.positive_int("steps", steps), _util.positive_int("batch_size", batch_size)
        self.model = build_convnet(self.x_test.shape[1:], num_classes, width, depth)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([self.steps // 2],
                                                                      [learning_rate, learning_rate / 10])
        self.model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def train(self, x, y, seed: int = 0) -> keras.Model:
        """Train the network, re-drawn from ``seed``, on (x, y) alone; returns it."""
        x, y = _check_labelled(x, y, self.model.output_shape[-1])
        if len(x) == 0:
            raise ValueError("cannot train on an empty set.")
        if x.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"images of shape {x.shape[1:]} but the test images are {self.x_test.shape[1:]}.")
        reinitialize(self.model, seed)
        for v in self.model.optimizer.variables:  # fresh momentum and step counter (the schedule restarts)
            v.assign(ops.zeros(v.shape, v.dtype))
        batch = min(self.batch_size, len(x))
        rng = np.random.default_rng(seed)
        # One epoch over a seeded, repeated permutation: the same seed gives the same batches.
        order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-self.steps * batch // len(x)))])
        order = order[: self.steps * batch]
        self.model.fit(x[order], y[order], batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return self.model

    def accuracy(self, x, y, seed: int = 0) -> float:
        """Real test accuracy of a network trained on (x, y) from ``seed``."""
        self.train(x, y, seed)
        return float(self.model.evaluate(self.x_test, self.y_test, batch_size=1000, verbose=0)[1])

    def evaluate(self, x, y, seeds=(0, 1, 2)) -> dict:
        """{"mean", "std", "accuracies"} of the real test accuracy over ``seeds``."""
        if len(seeds) == 0:
            raise ValueError("give at least one seed.")
        accs = [self.accuracy(x, y, s) for s in seeds]
        return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": accs}


# ---------------------------------------------------------------------------
# Learning representations from generated images


def multi_positive_contrastive_loss(embeddings, groups, temperature: float = 0.1):
    """SynCLR / StableRep's multi-positive contrastive loss.

    Embeddings are L2-normalised; for anchor i the model's distribution over the other
    examples is ``q_ij = softmax_{j != i}(z_i . z_j / tau)``, the target ``p_ij`` is uniform
    over the examples j != i of the same group (generated from the same caption, or class),
    and the loss is the cross-entropy ``-sum_j p_ij log q_ij`` averaged over anchors that
    have at least one positive. With exactly two examples per group it is InfoNCE (SimCLR's
    NT-Xent).

    Shapes: embeddings (batch, D), groups (batch,) int. Returns a scalar.
    """
    temperature = _util.number("temperature", temperature, 0.0, low_open=True)
    z = embeddings / (ops.norm(embeddings, axis=-1, keepdims=True) + 1e-12)
    n = ops.shape(z)[0]
    eye = ops.eye(n, dtype=z.dtype)
    logits = ops.matmul(z, ops.transpose(z)) / temperature - 1e9 * eye  # i is never its own candidate
    groups = ops.reshape(groups, (-1,))
    positives = ops.cast(ops.equal(groups[:, None], groups[None, :]), z.dtype) * (1.0 - eye)
    count = ops.sum(positives, axis=1)
    target = positives / ops.maximum(count, 1.0)[:, None]
    per_anchor = -ops.sum(target * ops.log_softmax(logits, axis=1), axis=1)
    has_positive = ops.cast(count > 0, z.dtype)
    return ops.sum(per_anchor * has_positive) / ops.maximum(ops.sum(has_positive), 1.0)


@keras.saving.register_keras_serializable(package="genlib")
class ContrastiveEncoder(keras.Model):
    """A ConvNet-D encoder with a projection head, trained by ``fit(images, groups)`` on the multi-positive loss.

    Args:
        image_shape: (H, W, C).
        width, depth: the encoder (``build_convnet`` without its head); its flattened
            last block is the representation.
        projection_dim: size of the projection the loss sees (an MLP head, as in SimCLR: the
            representation before it transfers better than the projection).
        temperature: tau of the loss.
        augmentation: None, or the arguments of an ``Augment`` layer applied to every image
            during training (``call`` with ``training=True``): SimCLR's views, SynCLR's extra invariances.

    Shapes: ``call`` (batch, H, W, C) -> (batch, projection_dim); ``encode`` -> (batch, features).
    Tracked metric: ``loss``.
    """

    def __init__(self, image_shape=(16, 16, 1), width: int = 32, depth: int = 3, projection_dim: int = 64,
                 temperature: float = 0.1, augmentation: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = _util.shape("image_shape", image_shape, rank=3)
        if augmentation is not None and not isinstance(augmentation, dict):
            raise ValueError(f"augmentation must be None or a dict of Augment arguments, got {augmentation!r}.")
        self.augmentation = None if augmentation is None else dict(augmentation)
        self.augment = None if augmentation is None else Augment(**self.augmentation, name="augment")
        self.width, self.depth = _util.positive_int("width", width), _util.positive_int("depth", depth)
        self.projection_dim = _util.positive_int("projection_dim", projection_dim)
        self.temperature = _util.number("temperature", temperature, 0.0, low_open=True)
        self.encoder = embedding_model(build_convnet(self.image_shape, 2, width, depth, name="encoder"))
        self.projection = keras.Sequential([layers.Dense(2 * self.projection_dim, activation="relu"),
                                            layers.Dense(self.projection_dim)], name="projection")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def build(self, input_shape=None):
        self.projection.build(self.encoder.output_shape)
        self.built = True

    def call(self, images, training=False):
        if training and self.augment is not None:
            images = self.augment(images, training=True)
        return self.projection(self.encoder(images, training=training), training=training)

    def encode(self, images, batch_size: int = 500) -> np.ndarray:
        """The representation (before the projection head), as NumPy: (N, features)."""
        return self.encoder.predict(np.asarray(images, "float32"), batch_size=batch_size, verbose=0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError("fit needs (images, groups): the group of each image defines its positives.")
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = multi_positive_contrastive_loss(y_pred, y, self.temperature)
        self.loss_tracker.update_state(loss)
        return loss

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "width": self.width,
                "depth": self.depth, "projection_dim": self.projection_dim, "temperature": self.temperature,
                "augmentation": self.augmentation}


def linear_probe(train_features, y_train, test_features, y_test, epochs: int = 20, learning_rate: float = 1e-2,
                 seed: int = 0) -> float:
    """Test accuracy of a softmax regression trained on frozen features: how linearly separable they are.

    Features are standardised with the training statistics first. Shapes: (N, D) features, (N,) labels.
    """
    f_train, f_test = np.asarray(train_features, "float32"), np.asarray(test_features, "float32")
    if f_train.ndim != 2 or f_test.ndim != 2 or f_train.shape[1] != f_test.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {f_train.shape} and {f_test.shape}.")
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    probe = keras.Sequential([keras.Input((f_train.shape[1],)),
                              layers.Dense(int(np.max(y_train)) + 1,
                                           kernel_initializer=keras.initializers.GlorotUniform(seed))])
    probe.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order = np.random.default_rng(seed).permutation(len(f_train))
    probe.fit((f_train - mean)[order] / std, np.asarray(y_train)[order], epochs=epochs, batch_size=128,
              shuffle=False, verbose=0)
    return float(probe.evaluate((f_test - mean) / std, y_test, batch_size=1000, verbose=0)[1])


# ---------------------------------------------------------------------------
# Augmentations (backend-neutral)


@keras.saving.register_keras_serializable(package="genlib")
class Augment(keras.layers.Layer):
    """Random shifts (a crop of the image padded with ``fill_value``), horizontal flips and Gaussian noise.

    SimCLR's lesson: a contrastive encoder learns what its augmentations leave unchanged.
    Everything is one ``ops.image.affine_transform`` per batch (integer shifts, nearest
    neighbour), so it runs inside ``fit`` on TensorFlow, JAX and PyTorch alike.

    Args:
        max_shift: largest shift in pixels along each axis (0: none); each image draws its own.
        flip: flip each image left-right with probability 1/2 (valid for Fashion-MNIST: a
            mirrored shoe is still a shoe; an upside-down one would not be).
        noise_std: standard deviation of added Gaussian noise (0: none).
        fill_value: value of the pixels shifted in (the background: -1 for images in [-1, 1]).
        seed: seed of the random draws; two layers with the same seed draw the same sequence.

    Shapes: (batch, H, W, C) -> (batch, H, W, C). Identity unless ``training`` is true.
    """

    def __init__(self, max_shift: int = 2, flip: bool = True, noise_std: float = 0.0, fill_value: float = -1.0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.max_shift = _util.positive_int("max_shift", max_shift, 0)
        if not isinstance(flip, (bool, np.bool_)):
            raise ValueError(f"flip must be True or False, got {flip!r}.")
        self.flip = bool(flip)
        self.noise_std = _util.number("noise_std", noise_std, 0.0)
        self.fill_value = _util.number("fill_value", fill_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        n, width = ops.shape(images)[0], images.shape[2]
        out = images
        if self.max_shift or self.flip:
            s = self.max_shift
            shift = ops.cast(keras.random.randint((n, 2), -s, s + 1, seed=self.seed_generator), "float32")
            mirrored = ops.cast(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, "float32")
            if not self.flip:
                mirrored = mirrored * 0.0
            # affine_transform maps each output pixel (x, y) to the input pixel (a0 x + a2, y + b2):
            # a0 = -1 with a2 = W - 1 mirrors, the shifts move the crop window.
            sign = 1.0 - 2.0 * mirrored
            zero, one = ops.zeros((n,)), ops.ones((n,))
            transform = ops.stack([sign, zero, mirrored * (width - 1) + shift[:, 0], zero, one, shift[:, 1],
                                   zero, zero], axis=1)
            out = ops.image.affine_transform(out, transform, interpolation="nearest", fill_mode="constant",
                                             fill_value=self.fill_value)
        if self.noise_std:
            out = out + self.noise_std * keras.random.normal(ops.shape(out), seed=self.seed_generator)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_shift": self.max_shift, "flip": self.flip, "noise_std": self.noise_std,
                "fill_value": self.fill_value, "seed": self.seed}


def paired_views(x, seed: int = 0):
    """SimCLR's batch layout for ``ContrastiveEncoder.fit``: every image twice, side by side, with its index as group.

    With augmentations on, the two copies become two different views, each the other's only
    positive; the multi-positive loss is then InfoNCE. Returns (images (2N, ...), groups (2N,)),
    the images in a seeded random order; train with an even batch size and ``shuffle=False``
    so the pairs stay in one batch.
    """
    x = np.asarray(x, "float32")
    order = np.random.default_rng(seed).permutation(len(x))
    return np.repeat(x[order], 2, axis=0), np.repeat(np.arange(len(x), dtype="int32"), 2)


def grouped_order(groups, group_size: int, seed: int = 0) -> np.ndarray:
    """Indices that put the images of each group (e.g. one caption) next to each other, groups in a seeded order.

    Train with ``shuffle=False`` and a batch size that is a multiple of ``group_size``, so a
    batch holds whole groups and every image has its positives in its batch.
    """
    groups = np.asarray(groups).reshape(-1)
    group_size = _util.positive_int("group_size", group_size)
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    order = [np.flatnonzero(groups == g)[:group_size] for g in ids]
    if any(len(o) != group_size for o in order):
        raise ValueError(f"every group needs at least group_size={group_size} members.")
    return np.concatenate(order)


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

        loss, _, (grad,) = _util.value_and_grad(loss_fn, [synthetic.images])
        optimizer.apply([grad], [synthetic.images])
        if clip is not None:
            synthetic.images.assign(ops.clip(synthetic.images, clip[0], clip[1]))
        return loss

    step = _util.compile_step(step, state=[*convnet.variables, synthetic.images, *optimizer.variables])
    return _distill(step, synthetic, x_real, y_real, iterations, real_per_class, convnet, seed, progress,
                    redraw_network)


# ---------------------------------------------------------------------------
# Parameter matching over many steps: matching training trajectories (MTT)


def flat_weights(model: keras.Model) -> np.ndarray:
    """``model``'s trainable weights as one float32 vector (the order of ``trainable_variables``)."""
    return np.concatenate([ops.convert_to_numpy(v).reshape(-1) for v in model.trainable_variables]).astype("float32")


def _unflatten(model, flat):
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    ends = [int(e) for e in np.cumsum([int(np.prod(s)) for s in shapes])]
    return [ops.reshape(part, s) for part, s in zip(ops.split(flat, ends[:-1]), shapes)]


def expert_trajectory(convnet: keras.Model, x, y, checkpoints: int = 10, steps_per_checkpoint: int = 20,
                      learning_rate: float = 0.01, batch_size: int = 128, seed: int = 0) -> np.ndarray:
    """Train ``convnet`` (redrawn from ``seed``) on real data with plain SGD, saving its weights along the way.

    The experts of trajectory matching: ``checkpoints`` segments of ``steps_per_checkpoint``
    SGD steps (no momentum, as in Cazenavette et al., so a student can follow with the same
    update rule). Returns (checkpoints + 1, P): the flat weights at the start and after each segment.
    """
    x, y = _check_labelled(x, y, convnet.output_shape[-1])
    checkpoints = _util.positive_int("checkpoints", checkpoints)
    steps = _util.positive_int("steps_per_checkpoint", steps_per_checkpoint)
    batch_size = min(_util.positive_int("batch_size", batch_size), len(x))
    reinitialize(convnet, seed)
    weights = convnet.trainable_variables
    lr = _util.number("learning_rate", learning_rate, 0.0, low_open=True)

    def sgd_step(images, labels):
        _, _, grads = _util.value_and_grad(
            lambda: _mean_cross_entropy(labels, convnet(images, training=True)), weights)
        for w, g in zip(weights, grads):
            w.assign_sub(lr * g)
        return 0.0

    sgd_step = _util.compile_step(sgd_step, state=convnet.variables)
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

    def loss_of(flat):
        fixed = [v.value for v in convnet.non_trainable_variables]
        logits, _ = convnet.stateless_call(_unflatten(convnet, flat), fixed, images, training=True)
        return _mean_cross_entropy(labels, logits)

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
