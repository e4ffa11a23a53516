"""Learning from generated data: the ConvNet, the evaluation protocol, multi-positive contrastive learning.

Chapter 16 (chapters/16_synthetic_data.ipynb). This module holds what the chapter's two halves
share and its representation-learning half; dataset distillation lives in
``genlib.distillation``.

* ``build_convnet``: ConvNet-D, the small classifier of the distillation literature
  (conv 3x3, instance norm, ReLU, average pooling, repeated D times; a linear head), also the
  encoder of the contrastive models; ``embedding_model`` gives its features.
* ``reinitialize``: draw fresh weights for a network in place (no rebuilding, no retracing).
* ``k_center_indices``: a class-balanced greedy k-centre coreset (Sener & Savarese 2018), the
  *selected* real subset that distilled sets are compared with besides random ones.
* ``ClassifierEvaluator``: the evaluation protocol (fresh ConvNets trained on a labelled set
  from several seeds; real test accuracy, mean and standard deviation), for distilled,
  selected, real and generated training sets alike.
* ``multi_positive_contrastive_loss`` and ``ContrastiveEncoder``: SynCLR / StableRep's loss
  (all images generated from the same caption or class are positives of each other) and an
  encoder trained with it by ``fit``; ``linear_probe`` scores its features.
* ``Augment`` (random shifts, flips, noise; backend-neutral), ``paired_views`` (SimCLR's two
  views) and ``grouped_order`` (whole caption groups per batch).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib import _util


def check_labelled(x, y, num_classes):
    """``(x, y)`` as float32 images (N, H, W, C) and int32 labels in [0, num_classes), or a clear ValueError."""
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


# ---------------------------------------------------------------------------
# The selection baseline: a class-balanced k-centre coreset


def k_center_indices(features, labels, per_class: int, num_classes: int | None = None) -> np.ndarray:
    """Greedy k-centre selection (Sener & Savarese 2018), class by class: ``per_class`` real examples of each class.

    Within class c the first centre is the example nearest the class's mean feature; each next
    one is the example farthest (Euclidean) from its nearest centre so far. This greedily
    shrinks the covering radius, the largest distance from an example of the class to its
    nearest chosen one, to at most twice the best possible. The selection baseline of the
    distillation papers: a real subset picked to *cover* each class rather than drawn at random.

    Args:
        features: (N, D) features (or (N, ...), flattened), e.g. a trained network's embedding.
        labels: (N,) int class labels in [0, num_classes).
        per_class: k, the examples picked per class (every class needs at least k).
        num_classes: C (default: the largest label + 1).

    Returns (C * per_class,) int indices into ``features``: class-major, each class's in the order picked.
    """
    f = np.asarray(features, "float64")
    y = np.asarray(labels).reshape(-1)
    if f.ndim < 2 or len(f) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, D) features and (N,) labels with N >= 1, got {f.shape} and {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}.")
    f = f.reshape(len(f), -1)
    per_class = _util.positive_int("per_class", per_class)
    num_classes = int(y.max()) + 1 if num_classes is None else _util.positive_int("num_classes", num_classes)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}].")
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than per_class={per_class}.")
        fc = f[idx]
        chosen = [int(np.argmin(np.sum((fc - fc.mean(axis=0)) ** 2, axis=1)))]
        nearest = np.sum((fc - fc[chosen[0]]) ** 2, axis=1)  # squared distance to the nearest centre so far
        for _ in range(per_class - 1):
            chosen.append(int(np.argmax(nearest)))
            nearest = np.minimum(nearest, np.sum((fc - fc[chosen[-1]]) ** 2, axis=1))
        picks.append(idx[chosen])
    return np.concatenate(picks)


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
        self.x_test, self.y_test = check_labelled(x_test, y_test, num_classes)
        self.steps, self.batch_size = _util.positive_int("steps", steps), _util.positive_int("batch_size", batch_size)
        self.model = build_convnet(self.x_test.shape[1:], num_classes, width, depth)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([self.steps // 2],
                                                                      [learning_rate, learning_rate / 10])
        self.model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def train(self, x, y, seed: int = 0) -> keras.Model:
        """Train the network, re-drawn from ``seed``, on (x, y) alone; returns it."""
        x, y = check_labelled(x, y, self.model.output_shape[-1])
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

