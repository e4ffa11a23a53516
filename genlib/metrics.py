"""The measuring stick every chapter uses.

* ``bits_per_dim``: a negative log-likelihood in nats turned into bits per dimension.
* A Fashion-MNIST **domain classifier** (a small CNN) trained once and cached on disk;
  its penultimate layer gives the features for **FID**, **KID**,
  **precision/recall** and **density/coverage**, and its predictions the **conditional accuracy**.
* ``evaluate_model``: ``generate`` then ``evaluate_samples``, for any genlib model.
* ``nearest_neighbours``: the memorisation check (is a sample a copy of a training image?).

Images may come in any of the book's conventions: size 16, 28 or 32; values in [0, 1],
[-1, 1] or ``uint8``; shape (N, H, W) or (N, H, W, 1). ``prepare_images`` brings them to
the classifier's (N, 28, 28, 1) in [0, 1] and says clearly when it cannot. Generated
images are always compared with real test images *of the same size*, put through the
same pipeline, so a 16×16 model is not punished for its resolution.
"""

from __future__ import annotations

import json
import time

import numpy as np

from genlib import _util, data, distributions, profiles

CLASSIFIER_VERSION = 1
FEATURE_LAYER = "features"


# ---------------------------------------------------------------------------
# Likelihoods


def bits_per_dim(nll_nats, num_dims: int, levels: int | None = None):
    """Bits per dimension from per-example nats, as float64 NumPy: ``genlib.distributions.bits_per_dim``."""
    return distributions.bits_per_dim(np.asarray(nll_nats, dtype="float64"), num_dims, levels)


# ---------------------------------------------------------------------------
# Images in, classifier input out


def prepare_images(images, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Bring images to the classifier's convention: float32 (N, 28, 28, 1) in [0, 1].

    Args:
        images: (N, H, W) or (N, H, W, C) with H = W in {16, 28, 32} and C in {1, 3};
            ``uint8`` in [0, 255] or floats.
        value_range: ``(0, 1)`` or ``(-1, 1)`` for float images; inferred when None
            (any value below 0 means [-1, 1]).
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] not in (16, 28, 32) or x.shape[3] not in (1, 3):
        raise ValueError(
            f"expected images of shape (N, S, S) or (N, S, S, 1|3) with S in 16/28/32, got {x.shape}."
        )
    if x.shape[3] == 3:
        x = x.mean(axis=-1, keepdims=True)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype("float32") / 255.0
    else:
        x = x.astype("float32")
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain NaN or infinite values.")
        if value_range is None:
            value_range = (-1.0, 1.0) if x.min() < 0 else (0.0, 1.0)
        low, high = value_range
        tolerance = 0.1 * (high - low)
        if x.min() < low - tolerance or x.max() > high + tolerance:
            raise ValueError(
                f"image values lie in [{x.min():.3g}, {x.max():.3g}], outside {tuple(value_range)}; "
                "pass images in [0, 1], [-1, 1] or uint8, or give value_range."
            )
        x = np.clip((x - low) / (high - low), 0.0, 1.0)
    size = x.shape[1]
    if size == 32:
        x = x[:, 2:30, 2:30, :]
    elif size == 16:
        import keras

        x = np.asarray(keras.ops.image.resize(x, (28, 28), interpolation="bilinear"), dtype="float32")
    return x


# ---------------------------------------------------------------------------
# The domain classifier


def build_classifier() -> keras.Model:  # noqa: F821
    """The domain classifier: two strided convs and a 128-unit feature layer. (N, 28, 28, 1) -> 10 logits.

    Strided convolutions instead of pooling: 4x cheaper on a CPU for the same accuracy per second.
    """
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1))
    h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inputs)
    h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Dropout(0.3)(layers.Flatten()(h))
    features = layers.Dense(128, activation="relu", name=FEATURE_LAYER)(h)
    logits = layers.Dense(10, name="logits")(layers.Dropout(0.3)(features))
    return keras.Model(inputs, logits, name="domain_classifier")


def hidden_features_model(model=None):
    """The domain classifier's convolutional feature maps as one Keras model, frozen.

    Args:
        model: a classifier made by ``build_classifier`` (trained or not); None: the trained,
            cached ``domain_classifier().model``.

    Returns a ``keras.Model`` (trainable=False) mapping images (N, 28, 28, 1) in [0, 1] to the
    list of each convolution's ReLU output, (N, 14, 14, 32) and (N, 7, 7, 64). These are the
    early features a perceptual loss compares (``genlib.vqgan.perceptual_loss``); the 128
    features that FID uses are deliberately not among them.
    """
    import keras

    model = domain_classifier().model if model is None else model
    if not isinstance(model, keras.Model) or not any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers):
        raise ValueError(f"model must be a Keras classifier with Conv2D layers (build_classifier()), got {model!r}.")
    # A copy: freezing the perceptual network must not freeze the classifier the metrics use.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    convs = [layer.output for layer in copy.layers if isinstance(layer, keras.layers.Conv2D)]
    features = keras.Model(copy.input, convs, name="classifier_feature_maps")
    features.trainable = False
    return features


class DomainClassifier:
    """The trained classifier with the two views the metrics need.

    Attributes:
        model: the Keras model (logits).
        test_accuracy: accuracy on the 10,000 Fashion-MNIST test images.
    """

    def __init__(self, model, test_accuracy: float):
        import keras

        self.model = model
        self.test_accuracy = float(test_accuracy)
        self.feature_model = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
        self._reference: dict[int, np.ndarray] = {}

    def features(self, images, value_range=None, batch_size: int = 500) -> np.ndarray:
        """Penultimate-layer features, shape (N, 128)."""
        x = prepare_images(images, value_range)
        return np.asarray(self.feature_model.predict(x, batch_size=batch_size, verbose=0), dtype="float64")

    def predict(self, images, value_range=None, batch_size: int = 500) -> np.ndarray:
        """Predicted class per image, shape (N,)."""
        x = prepare_images(images, value_range)
        return np.argmax(self.model.predict(x, batch_size=batch_size, verbose=0), axis=-1)

    def reference_features(self, size: int = 28) -> np.ndarray:
        """Features of all 10,000 real test images, shrunk or padded to ``size`` first."""
        if size not in self._reference:
            # the test images alone: fashion_mnist() would also resize all 60,000 training images
            (_, _), (x_test, _) = data.load_fashion_mnist()
            real = data.resize(data.scale(x_test[..., None]), size)
            self._reference[size] = self.features(real)
        return self._reference[size]


def _classifier_settings(profile: str) -> dict:
    # smoke: two passes fit CI's budget (~25 s) and clear 0.85;
    # cpu/full share one cached model that clears 0.90.
    epochs = profiles.pick(smoke=2, cpu=12, full=12, profile=profile)
    return {"version": CLASSIFIER_VERSION, "epochs": epochs, "batch_size": 256, "seed": 0}


_loaded: dict[str, DomainClassifier] = {}


def domain_classifier(profile: str | None = None, verbose: int | str = "auto") -> DomainClassifier:
    """The Fashion-MNIST domain classifier: loaded from the cache, or trained once and cached.

    The cache file is ``$GENLIB_CACHE/domain-classifier-v{version}-e{epochs}-keras{X.Y.Z}.keras``:
    the ``smoke`` model (2 epochs) and the ``cpu``/``full`` model (12 epochs) live side by
    side, and a file written by one Keras version is never read by another (a newer Keras
    may write configuration an older one cannot load).
    """
    import keras

    profile = profile or profiles.active()
    settings = _classifier_settings(profile)
    stem = f"domain-classifier-v{settings['version']}-e{settings['epochs']}-keras{keras.__version__}"
    if stem in _loaded:
        return _loaded[stem]
    path = profiles.cache_dir() / f"{stem}.keras"
    info_path = profiles.cache_dir() / f"{stem}.json"
    if path.exists() and info_path.exists():
        model = keras.saving.load_model(path)
        info = json.loads(info_path.read_text())
    else:
        if verbose == "auto":  # as every fit in a chapter: silent in CI and in a built page, else a live bar
            verbose = 0 if profile == "smoke" else _util.fit_verbose()
        model, info = _train_classifier(settings, verbose)
        tmp = path.with_suffix(".tmp.keras")
        model.save(tmp)
        tmp.replace(path)  # atomic: a half-written file is never picked up
        info_path.write_text(json.dumps(info, indent=1))
    _loaded[stem] = DomainClassifier(model, info["test_accuracy"])
    return _loaded[stem]


def _train_classifier(settings: dict, verbose) -> tuple:
    import keras

    keras.utils.set_random_seed(settings["seed"])
    fm = data.fashion_mnist()
    model = build_classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(fm.x_train, fm.y_train, epochs=settings["epochs"], batch_size=settings["batch_size"],
              verbose=verbose)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(fm.x_test, fm.y_test, batch_size=1000, verbose=0)
    return model, {**settings, "test_accuracy": float(accuracy), "train_seconds": seconds}


# ---------------------------------------------------------------------------
# Distances between feature distributions


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D).

    ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. The trace of the matrix square root
    is computed as that of ``(S1^(1/2) S2 S1^(1/2))^(1/2)``, a symmetric matrix with the
    same eigenvalues, so no complex arithmetic is needed.
    """
    f1, f2 = _check_features(f1, f2)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    eig = np.linalg.eigvalsh(sqrt_s1 @ s2 @ sqrt_s1)
    trace_sqrt = np.sqrt(np.maximum(eig, 0.0)).sum()
    return float(max(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt, 0.0))


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Unbiased KID (squared MMD, cubic polynomial kernel): ``(mean, std)`` over random subsets.

    Each subset draws ``min(subset_size, N1, N2)`` rows of each set without replacement;
    the diagonal terms are left out, so the estimate has no small-sample bias.
    """
    f1, f2 = _check_features(f1, f2)
    m = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        mmd2 = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
        values.append(mmd2)
    return float(np.mean(values)), float(np.std(values))


def _pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    out = np.empty((len(a), len(b)), dtype="float64")
    b2 = (b**2).sum(1)
    for i in range(0, len(a), chunk):
        x = a[i: i + chunk]
        d2 = (x**2).sum(1)[:, None] + b2[None, :] - 2.0 * x @ b.T
        out[i: i + chunk] = np.sqrt(np.maximum(d2, 0.0))
    return out


def _kth_neighbour_radius(f: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise_distances(f, f)
    # Column 0 after sorting is the point itself (distance 0); column k is its k-th neighbour.
    return np.partition(d, k, axis=1)[:, k]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, Kynkäänniemi et al. 2019).

    Precision: fraction of fake features inside the real manifold (the union of balls
    around each real feature reaching its k-th nearest real neighbour). Recall: the same
    with the roles swapped. Both saturate when one real outlier's large ball swallows a
    collapsed set of fakes; ``density_coverage`` does not.
    """
    return manifold_scores(real, fake, k)[:2]


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), robust to outliers in the real set.

    Density: how many real balls contain each fake, on average, divided by k (about 1 for
    a perfect model, can exceed 1). Coverage: fraction of real balls that contain at
    least one fake: a collapsed or off-manifold model covers few.
    """
    return manifold_scores(real, fake, k)[2:]


def manifold_scores(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float, float, float]:
    """``(precision, recall, density, coverage)`` from one set of k-NN balls."""
    real, fake = _check_features(real, fake)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} features in each set.")
    real_radius = _kth_neighbour_radius(real, k)
    fake_radius = _kth_neighbour_radius(fake, k)
    d = _pairwise_distances(fake, real)  # (fake, real)
    in_real_ball = d <= real_radius[None, :]
    precision = np.mean(np.any(in_real_ball, axis=1))
    recall = np.mean(np.any(d.T <= fake_radius[None, :], axis=1))
    density = in_real_ball.sum() / (k * len(fake))
    coverage = np.mean(np.any(in_real_ball, axis=0))
    return float(precision), float(recall), float(density), float(coverage)


def _check_features(f1, f2):
    f1, f2 = np.asarray(f1, dtype="float64"), np.asarray(f2, dtype="float64")
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected two (N, D) feature arrays with the same D, got {f1.shape} and {f2.shape}.")
    if min(len(f1), len(f2)) < 2:
        raise ValueError("each feature set needs at least 2 rows.")
    return f1, f2


# ---------------------------------------------------------------------------
# What chapters call


def num_eval_samples(profile: str | None = None) -> int:
    """How many samples each chapter scores, so numbers within a profile are comparable."""
    return profiles.pick(smoke=500, cpu=2000, full=5000, profile=profile)


def evaluate_samples(samples, value_range=None, classifier: DomainClassifier | None = None,
                     reference: str = "test") -> dict:
    """FID, KID (mean, std), precision, recall, density and coverage of ``samples`` vs real test images.

    The real images are brought to the samples' size first (16, 28 or 32), so each model
    is compared with data at its own resolution. Returns a dict of floats.

    FID depends on the number of samples: compare models at the same ``len(samples)``
    (``num_eval_samples()`` per profile).
    """
    if reference != "test":
        raise ValueError(f"reference must be 'test', got {reference!r}.")
    classifier = classifier or domain_classifier()
    fake = classifier.features(samples, value_range)
    size = np.asarray(samples).shape[1]
    real = classifier.reference_features(size)
    kid_mean, kid_std = kernel_inception_distance(real, fake)
    rng = np.random.default_rng(0)
    # k-NN manifolds are compared at equal sizes, as in the papers that define them.
    real_pr = real[rng.choice(len(real), min(len(real), len(fake)), replace=False)]
    precision, recall, density, coverage = manifold_scores(real_pr, fake)
    return {
        "fid": frechet_distance(real, fake),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
        "num_samples": int(len(fake)),
    }


def evaluate_model(model, n: int | None = None, *, seed: int = 0, value_range=None,
                   classifier: DomainClassifier | None = None, **options) -> dict:
    """Sample ``n`` images with ``model.generate(n, seed=seed, **options)`` and score them.

    Any genlib generative model (or baseline) answers ``generate``; this is how the chapters
    and the comparison page score them alike. ``n`` defaults to ``num_eval_samples()``.
    Returns ``evaluate_samples``' dict plus ``sample_seconds_per_image``.
    """
    from genlib._util import positive_int

    n = num_eval_samples() if n is None else positive_int("n", n)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"{type(model).__name__} has no generate(n, seed=...) method.")
    start = time.perf_counter()
    samples = np.asarray(model.generate(n, seed=seed, **options))
    seconds = time.perf_counter() - start
    if len(samples) != n:
        raise ValueError(f"{type(model).__name__}.generate({n}) returned {len(samples)} samples.")
    return {**evaluate_samples(samples, value_range, classifier), "sample_seconds_per_image": seconds / n}


def conditional_accuracy(samples, labels, value_range=None, classifier: DomainClassifier | None = None) -> float:
    """Fraction of samples the domain classifier assigns to the class they were asked for."""
    labels = np.asarray(labels).ravel()
    if len(labels) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels.")
    classifier = classifier or domain_classifier()
    return float(np.mean(classifier.predict(samples, value_range) == labels))


def clip_score(model, images, text_embeddings, batch_size: int = 500) -> np.ndarray:
    """CLIP score: cosine between each image's embedding and its prompt's unit text embedding. Returns (N,).

    ``model`` is a dual encoder (``genlib.multimodal.DualEncoder``: anything with
    ``encode_images(images) -> (B, D)`` unit vectors); ``text_embeddings`` (N, D) are unit vectors
    of the prompts, row i for image i (``genlib.multimodal.embed_text``). Images in the encoder's
    value range. Hessel et al.'s CLIPScore is ``2.5 max(cos, 0)`` with OpenAI's CLIP; the book
    reports the plain cosine from its own dual encoder, whose real image-caption pairs set the scale.
    """
    from keras import ops

    from genlib._util import positive_int

    images = np.asarray(images, "float32")
    batch_size = positive_int("batch_size", batch_size)
    if not callable(getattr(model, "encode_images", None)):
        raise ValueError(f"clip_score needs a dual encoder with encode_images, got {type(model).__name__}.")
    u = np.concatenate([ops.convert_to_numpy(model.encode_images(images[i: i + batch_size]))
                        for i in range(0, len(images), batch_size)])
    v = np.asarray(text_embeddings, "float32")
    if v.shape != u.shape:
        raise ValueError(f"need one text embedding per image: images give {u.shape}, texts {v.shape}.")
    return np.sum(u * v, axis=1)


def nearest_neighbours(samples, train, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the index of and L2 pixel distance to its nearest training image.

    ``samples`` and ``train`` must share shape and value range (e.g. both (N, 28, 28, 1) in [0, 1]).
    Compare the distances with those of real *test* images to the training set: samples
    much closer than test images are copies (memorisation).
    """
    s = np.asarray(samples, dtype="float32").reshape(len(samples), -1)
    t = np.asarray(train, dtype="float32").reshape(len(train), -1)
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"samples {np.shape(samples)} and train {np.shape(train)} differ in image shape.")
    t2 = (t**2).sum(1)
    index = np.empty(len(s), dtype="int64")
    dist = np.empty(len(s), dtype="float32")
    for i in range(0, len(s), batch):
        x = s[i: i + batch]
        d2 = (x**2).sum(1)[:, None] + t2[None, :] - 2.0 * x @ t.T
        index[i: i + batch] = np.argmin(d2, axis=1)
        dist[i: i + batch] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return index, dist
