"""Generative adversarial networks: DCGAN, WGAN-GP, class-conditional GANs, feature quantisation.

A generator ``G`` maps noise ``z`` to an image; a discriminator (critic) ``D`` scores images.
They are trained against each other, so a GAN needs two optimizers and overrides
``train_step`` (TensorFlow backend: the gradient penalty and the two updates use
``tf.GradientTape``; all the math goes through ``keras.ops``).

* ``build_generator`` / ``build_discriminator``: DCGAN-style convolutional nets, optionally
  class-conditional (a label embedding for ``G``, one-hot label channels for ``D``) and with
  a ``FeatureQuantization`` layer inside ``D``.
* ``build_mlp_generator`` / ``build_mlp_discriminator``: small MLPs for 2-D toy data.
* ``discriminator_loss`` / ``generator_loss``: the non-saturating GAN losses, with label
  smoothing.
* ``interpolates`` / ``gradient_penalty``: WGAN-GP's penalty on points drawn uniformly on
  the segments between real and fake examples.
* ``FeatureQuantization``: FQ-GAN's layer: features snapped to the nearest entry of a
  dictionary kept by moving averages, straight-through gradients, commitment loss.
* ``GAN`` (non-saturating loss, label smoothing and label flipping) and ``WGANGP``
  (Wasserstein loss, gradient penalty, ``n_critic`` critic steps per generator step).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib._util import positive_int as _positive_int


def _fraction(name, value, high=1.0, closed=False):
    ok = 0.0 <= value <= high if closed else 0.0 <= value < high
    if not ok:
        raise ValueError(f"{name} must lie in [0, {high}{']' if closed else ')'}, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------
# Feature quantisation


@keras.saving.register_keras_serializable(package="genlib")
class FeatureQuantization(keras.layers.Layer):
    """FQ-GAN's feature quantisation: each feature vector snapped to its nearest dictionary entry.

    The dictionary is not learned by gradients: it is a moving average of the features
    assigned to each entry (as in VQ-VAE's EMA variant), so it follows the features of
    *both* real and fake images as the discriminator sees them. Because real and fake
    features are then described by the same few entries, the discriminator's later layers
    compare the two distributions through shared, slowly moving summaries: an implicit
    feature matching.

    Args:
        num_embeddings: dictionary size K.
        decay: moving-average momentum in [0, 1); higher means a slower dictionary.
        commitment_weight: weight beta of the commitment loss
            ``beta * mean((x - sg(q))^2)``, added with ``add_loss`` so features stay near
            the entries they are snapped to.
        epsilon: floor of the cluster sizes the average divides by.
        init_from_data: on the first training call, set the entries to K feature vectors
            drawn from the batch. A random dictionary far from the features would send every
            vector to the same nearest entry, and the others would never move (dead entries).
        seed: seed of the random initialisation and of the vectors drawn for it.

    Shapes: (..., D) -> (..., D): every length-D vector along the last axis is quantised.
    In training mode the forward pass returns dictionary entries, and the gradient passes
    straight through to the input (``x + sg(q - x)``).
    """

    def __init__(self, num_embeddings: int = 64, decay: float = 0.9, commitment_weight: float = 0.25,
                 epsilon: float = 1e-5, init_from_data: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings, 2)
        self.decay = _fraction("decay", decay)
        if commitment_weight < 0 or epsilon <= 0:
            raise ValueError(f"commitment_weight must be >= 0 and epsilon > 0, got {commitment_weight}, {epsilon}.")
        self.commitment_weight, self.epsilon, self.seed = float(commitment_weight), float(epsilon), seed
        self.init_from_data = bool(init_from_data)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"FeatureQuantization needs a known last axis, got input shape {input_shape}.")
        self.dim = int(dim)
        init = keras.initializers.RandomNormal(stddev=1.0, seed=self.seed)
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_embeddings, self.dim),
                                          initializer=init, trainable=False)
        # Start every entry with a count of one: its first update is a proper weighted mean
        # of the old entry and the new features, not a jump driven by an empty count.
        self.cluster_size = self.add_weight(name="cluster_size", shape=(self.num_embeddings,),
                                            initializer="ones", trainable=False)
        self.embed_sum = self.add_weight(name="embed_sum", shape=(self.num_embeddings, self.dim),
                                         initializer="zeros", trainable=False)
        self.embed_sum.assign(self.embeddings)
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros", trainable=False)

    def codes(self, x):
        """Index of the nearest dictionary entry for every vector: (..., D) -> (...,) int."""
        flat = ops.reshape(x, (-1, self.dim))
        d2 = (ops.sum(flat**2, axis=1, keepdims=True) - 2.0 * ops.matmul(flat, ops.transpose(self.embeddings))
              + ops.sum(self.embeddings**2, axis=1)[None, :])
        return ops.reshape(ops.argmin(d2, axis=1), ops.shape(x)[:-1])

    def update_dictionary(self, x):
        """One moving-average step of the dictionary towards the mean of the vectors assigned to each entry."""
        flat = ops.reshape(ops.stop_gradient(x), (-1, self.dim))
        if self.init_from_data:
            # First call only (a flag, not Python control flow, so it works inside a compiled step).
            first = self.initialized < 0.5
            picks = keras.random.randint((self.num_embeddings,), 0, ops.shape(flat)[0], seed=self.seed_generator)
            drawn = ops.take(flat, picks, axis=0)
            self.embeddings.assign(ops.where(first, drawn, self.embeddings))
            self.embed_sum.assign(ops.where(first, drawn, self.embed_sum))
            self.initialized.assign(1.0)
        onehot = ops.one_hot(ops.reshape(self.codes(x), (-1,)), self.num_embeddings, dtype=flat.dtype)
        count = ops.sum(onehot, axis=0)  # (K,)
        total = ops.matmul(ops.transpose(onehot), flat)  # (K, D)
        used = count > 0
        # Entries no vector chose keep their counts and sums: an unused entry stays where it is.
        new_size = ops.where(used, self.decay * self.cluster_size + (1.0 - self.decay) * count, self.cluster_size)
        new_sum = ops.where(used[:, None], self.decay * self.embed_sum + (1.0 - self.decay) * total, self.embed_sum)
        self.cluster_size.assign(new_size)
        self.embed_sum.assign(new_sum)
        self.embeddings.assign(new_sum / ops.maximum(new_size, self.epsilon)[:, None])

    def call(self, x, training=None):
        if training:
            self.update_dictionary(x)
        q = ops.take(self.embeddings, ops.reshape(self.codes(x), (-1,)), axis=0)
        q = ops.reshape(q, ops.shape(x))
        if self.commitment_weight:
            self.add_loss(self.commitment_weight * ops.mean((x - ops.stop_gradient(q)) ** 2))
        return x + ops.stop_gradient(q - x)  # forward: q; backward: identity

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_embeddings": self.num_embeddings, "decay": self.decay,
                "commitment_weight": self.commitment_weight, "epsilon": self.epsilon,
                "init_from_data": self.init_from_data, "seed": self.seed}


# ---------------------------------------------------------------------------
# Networks


def _check_image_shape(image_shape):
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or image_shape[0] != image_shape[1] or image_shape[0] % 4:
        raise ValueError(f"image_shape must be (S, S, C) with S divisible by 4 (two stride-2 layers), "
                         f"got {image_shape}.")
    return image_shape


def build_generator(latent_dim: int = 64, image_shape=(28, 28, 1), filters: int = 64, num_classes: int = 0,
                    label_dim: int = 16, name: str = "generator") -> keras.Model:
    """DCGAN generator: Dense → (S/4, S/4, 2f) → up-convolution (f) → up-convolution (C), tanh.

    Batch normalisation and ReLU between layers, strided transposed convolutions to upsample,
    as in DCGAN (Radford et al. 2016).

    Args:
        latent_dim: length of the noise vector z.
        image_shape: (S, S, C), S divisible by 4 (16, 28, 32).
        filters: channels f of the last hidden layer (the first has 2f).
        num_classes: > 0 makes it class-conditional: inputs ``[z, label]``, the label's learned
            embedding (``label_dim`` numbers) concatenated with z.
        label_dim: size of the label embedding.

    Inputs z (batch, latent_dim) [and labels (batch,) int]; output (batch, S, S, C) in [-1, 1].
    """
    latent_dim = _positive_int("latent_dim", latent_dim)
    size, _, channels = _check_image_shape(image_shape)
    filters = _positive_int("filters", filters)
    num_classes = _positive_int("num_classes", num_classes, 0)
    z = keras.Input((latent_dim,), name="z")
    inputs, h = [z], z
    if num_classes:
        label = keras.Input((), dtype="int32", name="label")
        inputs.append(label)
        h = layers.Concatenate()([z, layers.Embedding(num_classes, label_dim, name="label_embedding")(label)])
    s = size // 4
    h = layers.Dense(s * s * 2 * filters, use_bias=False)(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.Reshape((s, s, 2 * filters))(h)
    h = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    out = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="tanh", name="image")(h)
    return keras.Model(inputs if num_classes else z, out, name=name)


def build_discriminator(image_shape=(28, 28, 1), filters: int = 64, num_classes: int = 0, dropout: float = 0.0,
                        feature_quantization: dict | None = None, conditioning: str = "channels",
                        name: str = "discriminator") -> keras.Model:
    """DCGAN discriminator (or WGAN critic): conv (f, stride 2) → conv (2f, stride 2) → dense → one score.

    LeakyReLU(0.2) activations and no batch normalisation, so each example's score depends
    on that example only (the gradient penalty needs this).

    Args:
        image_shape: (S, S, C), S divisible by 4.
        filters: channels f of the first convolution.
        num_classes: > 0 makes it class-conditional: inputs ``[images, labels]``.
        conditioning: how a conditional D sees the label: ``"channels"``, one-hot planes
            concatenated to the image (constant over it); ``"projection"`` (Miyato & Koyama
            2018), the inner product of a learned label embedding with the last features,
            added to the logit, so the label multiplies the evidence instead of adding to it.
        dropout: dropout rate after each convolution.
        feature_quantization: ``None``, or keyword arguments of ``FeatureQuantization``
            (e.g. ``{"num_embeddings": 64}``): the (S/4, S/4, 2f) feature map is quantised.

    Inputs images (batch, S, S, C) in [-1, 1] [and labels (batch,) int]; output (batch, 1) logits.
    """
    size, _, channels = _check_image_shape(image_shape)
    filters = _positive_int("filters", filters)
    num_classes = _positive_int("num_classes", num_classes, 0)
    dropout = _fraction("dropout", dropout)
    if feature_quantization is not None and not isinstance(feature_quantization, dict):
        raise ValueError(f"feature_quantization must be None or a dict of FeatureQuantization arguments, "
                         f"got {feature_quantization!r}.")
    if conditioning not in ("channels", "projection"):
        raise ValueError(f"conditioning must be 'channels' or 'projection', got {conditioning!r}.")
    x = keras.Input((size, size, channels), name="images")
    inputs, h = [x], x
    if num_classes:
        label = keras.Input((), dtype="int32", name="label")
        inputs.append(label)
    if num_classes and conditioning == "channels":
        onehot = layers.CategoryEncoding(num_classes, output_mode="one_hot")(label)
        planes = layers.UpSampling2D(size)(layers.Reshape((1, 1, num_classes))(onehot))
        h = layers.Concatenate()([x, planes])
    for i, f in enumerate((filters, 2 * filters)):
        h = layers.LeakyReLU(0.2)(layers.Conv2D(f, 4, strides=2, padding="same", name=f"conv_{i}")(h))
        if dropout:
            h = layers.Dropout(dropout)(h)
    if feature_quantization is not None:
        h = FeatureQuantization(**feature_quantization, name="fq")(h)
    h = layers.Flatten()(h)
    out = layers.Dense(1, name="logit")(h)
    if num_classes and conditioning == "projection":
        embedding = layers.Flatten()(layers.Embedding(num_classes, h.shape[-1], name="label_projection")(label))
        out = layers.Add()([out, layers.Dot(axes=1)([embedding, h])])
    return keras.Model(inputs if num_classes else x, out, name=name)


def build_mlp_generator(latent_dim: int = 2, data_dim: int = 2, units: int = 64, depth: int = 2,
                        name: str = "generator") -> keras.Model:
    """MLP generator for toy data: ``depth`` ReLU layers of ``units``, linear output.

    Shapes: (batch, latent_dim) -> (batch, data_dim).
    """
    z = keras.Input((_positive_int("latent_dim", latent_dim),), name="z")
    h = z
    for _ in range(_positive_int("depth", depth)):
        h = layers.Dense(_positive_int("units", units), activation="relu")(h)
    return keras.Model(z, layers.Dense(_positive_int("data_dim", data_dim))(h), name=name)


def build_mlp_discriminator(data_dim: int = 2, units: int = 64, depth: int = 2,
                            name: str = "discriminator") -> keras.Model:
    """MLP discriminator for toy data: ``depth`` LeakyReLU layers, one logit. (batch, data_dim) -> (batch, 1)."""
    x = keras.Input((_positive_int("data_dim", data_dim),), name="x")
    h = x
    for _ in range(_positive_int("depth", depth)):
        h = layers.LeakyReLU(0.2)(layers.Dense(_positive_int("units", units))(h))
    return keras.Model(x, layers.Dense(1)(h), name=name)


# ---------------------------------------------------------------------------
# Losses and the gradient penalty


def discriminator_loss(real_logits, fake_logits, label_smoothing: float = 0.0):
    """Binary cross-entropy of D: real examples labelled ``1 - label_smoothing``, fakes 0.

    ``-(1-s) log sigma(r) - s log(1 - sigma(r)) - log(1 - sigma(f))``, averaged, written with
    softplus (``-log sigma(t) = softplus(-t)``) so large logits do not overflow.
    """
    s = label_smoothing
    real = (1.0 - s) * ops.softplus(-real_logits) + s * ops.softplus(real_logits)
    return ops.mean(real) + ops.mean(ops.softplus(fake_logits))


def generator_loss(fake_logits):
    """Non-saturating generator loss ``-log D(G(z)) = softplus(-logit)``, averaged."""
    return ops.mean(ops.softplus(-fake_logits))


def interpolates(real, fake, alpha):
    """Points ``real + alpha * (fake - real)`` on the segments between paired examples.

    ``alpha`` has shape (batch,) (one number per example, broadcast over the other axes).
    """
    alpha = ops.reshape(ops.cast(alpha, real.dtype), (-1,) + (1,) * (len(real.shape) - 1))
    return real + alpha * (fake - real)


def input_gradients(fn, x):
    """d sum(fn(x)) / dx: for a per-example scorer, each example's gradient of its own score."""
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("the gradient penalty is written for the TensorFlow backend (tf.GradientTape).")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        score = ops.sum(fn(x))
    return tape.gradient(score, x)


def gradient_penalty(critic, real, fake, alpha=None, seed=None, labels=None):
    """WGAN-GP's penalty ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` at ``x_hat`` on the real–fake segments.

    Args:
        critic: a model scoring a batch, (batch, ...) -> (batch, 1); with ``labels`` it is
            called on ``[x, labels]``.
        real, fake: (batch, ...) tensors of the same shape.
        alpha: (batch,) positions on the segments; drawn **uniformly in [0, 1]** when None.
        seed: int or ``keras.random.SeedGenerator`` for alpha.
        labels: (batch,) class labels for a conditional critic.
    """
    if tuple(real.shape) != tuple(fake.shape):
        raise ValueError(f"real and fake must have the same shape, got {real.shape} and {fake.shape}.")
    if alpha is None:
        alpha = keras.random.uniform((ops.shape(real)[0],), 0.0, 1.0, seed=seed)
    x_hat = interpolates(real, fake, alpha)
    fn = (lambda x: critic([x, labels], training=True)) if labels is not None else (lambda x: critic(x, training=True))
    grads = input_gradients(fn, x_hat)
    norms = ops.sqrt(ops.sum(ops.reshape(grads, (ops.shape(grads)[0], -1)) ** 2, axis=1) + 1e-12)
    return ops.mean((norms - 1.0) ** 2)


# ---------------------------------------------------------------------------
# Models


@keras.saving.register_keras_serializable(package="genlib")
class GAN(keras.Model):
    """A GAN trained with the non-saturating loss: one discriminator step, then one generator step.

    Args:
        generator: z (batch, latent_dim) [and labels] -> samples.
        discriminator: samples [and labels] -> (batch, 1) logits.
        num_classes: > 0 for class-conditional nets (``fit((x, y))``; fakes get the batch's labels).
        label_smoothing: D's target for real examples is ``1 - label_smoothing`` (one-sided).
        label_flip: probability of swapping each real/fake target in D's loss (label noise).
        seed: seed of the noise, labels and flips drawn during training.

    ``compile(d_optimizer=..., g_optimizer=...)``; ``fit(x)`` or ``fit((x, y))``; ``call(z)``
    (or ``call([z, labels])``) runs the generator; ``generate(n)`` samples.
    Metrics: ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (mean D output on each).
    """

    def __init__(self, generator, discriminator, num_classes: int = 0, label_smoothing: float = 0.0,
                 label_flip: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(generator, keras.Model) or not isinstance(discriminator, keras.Model):
            raise ValueError(f"generator and discriminator must be keras Models, got "
                             f"{type(generator).__name__} and {type(discriminator).__name__}.")
        self.generator, self.discriminator = generator, discriminator
        self.num_classes = _positive_int("num_classes", num_classes, 0)
        conditional_nets = len(generator.inputs) == 2, len(discriminator.inputs) == 2
        if conditional_nets != (bool(self.num_classes),) * 2:
            raise ValueError(f"num_classes={num_classes} needs {'two' if self.num_classes else 'one'} inputs "
                             f"in both nets, got {len(generator.inputs)} (generator) and "
                             f"{len(discriminator.inputs)} (discriminator).")
        self.label_smoothing = _fraction("label_smoothing", label_smoothing, 0.5)
        self.label_flip = _fraction("label_flip", label_flip, 0.5)
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.built = True  # both nets arrive built; there is nothing else to create

    metric_names = ("d_loss", "g_loss", "d_real", "d_fake")

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        """Two optimizers: ``d_optimizer`` for the discriminator, ``g_optimizer`` for the generator."""
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def get_compile_config(self):
        return None  # the two optimizers are chosen again after loading: a saved model is for sampling

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def _split(self, data):
        if isinstance(data, (tuple, list)):
            x, y = data[0], (data[1] if len(data) > 1 else None)
        else:
            x, y = data, None
        if self.num_classes and y is None:
            raise ValueError("a conditional GAN trains on (images, labels).")
        return x, (ops.cast(ops.reshape(y, (-1,)), "int32") if self.num_classes else None)

    def _with_labels(self, x, y):
        return [x, y] if self.num_classes else x

    def noise(self, n):
        return keras.random.normal((n, self.latent_dim), seed=self.seed_generator)

    def _d_step(self, real, labels):
        import tensorflow as tf

        n = ops.shape(real)[0]
        z = self.noise(n)
        fake = self.generator(self._with_labels(z, labels), training=True)
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(self._with_labels(real, labels), training=True)
            extra = self._extra_losses()  # read after each call: a call replaces the previous call's losses
            fake_logits = self.discriminator(self._with_labels(fake, labels), training=True)
            extra = extra + self._extra_losses()
            if self.label_flip:
                # Label noise: a flipped example swaps roles in the loss.
                flip = keras.random.uniform((n, 1), seed=self.seed_generator) < self.label_flip
                real_logits, fake_logits = ops.where(flip, fake_logits, real_logits), \
                    ops.where(flip, real_logits, fake_logits)
            loss = discriminator_loss(real_logits, fake_logits, self.label_smoothing)
            total = loss + extra
        grads = tape.gradient(total, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)
        return loss, ops.mean(ops.sigmoid(real_logits)), ops.mean(ops.sigmoid(fake_logits))

    def _extra_losses(self):
        # The commitment loss of a FeatureQuantization layer, from the discriminator's last call.
        losses = self.discriminator.losses
        return ops.sum(ops.stack(losses)) if losses else 0.0

    def _g_step(self, n, labels):
        import tensorflow as tf

        z = self.noise(n)
        with tf.GradientTape() as tape:
            fake = self.generator(self._with_labels(z, labels), training=True)
            # training=False: the generator's step must not move D's dictionary or dropout masks.
            loss = self.generator_objective(self.discriminator(self._with_labels(fake, labels), training=False))
        grads = tape.gradient(loss, self.generator.trainable_variables)
        self.g_optimizer.apply(grads, self.generator.trainable_variables)
        return loss

    def generator_objective(self, fake_logits):
        return generator_loss(fake_logits)

    def train_step(self, data):
        real, labels = self._split(data)
        d_loss, d_real, d_fake = self._d_step(real, labels)
        g_loss = self._g_step(ops.shape(real)[0], labels)
        for name, value in zip(self.metric_names, (d_loss, g_loss, d_real, d_fake)):
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}

    def generate(self, n: int, labels=None, seed=None, batch_size: int = 500) -> np.ndarray:
        """``n`` samples as a NumPy array (images in [-1, 1]); ``labels`` (n,) for a conditional GAN."""
        n = _positive_int("n", n)
        if self.num_classes and labels is None:
            raise ValueError("a conditional GAN needs labels (n,) to generate.")
        gen = keras.random.SeedGenerator(seed) if seed is not None else self.seed_generator
        out = []
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            z = keras.random.normal((m, self.latent_dim), seed=gen)
            inputs = [z, ops.convert_to_tensor(np.asarray(labels[i: i + m], dtype="int32"))] if self.num_classes else z
            out.append(ops.convert_to_numpy(self.generator(inputs, training=False)))
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "generator": keras.saving.serialize_keras_object(self.generator),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator),
                "num_classes": self.num_classes, "label_smoothing": self.label_smoothing,
                "label_flip": self.label_flip, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("generator", "discriminator"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="genlib")
class WGANGP(GAN):
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

    The critic maximises ``mean D(real) - mean D(fake)`` minus ``gp_weight`` times the
    gradient penalty; the generator maximises ``mean D(fake)``. Each batch of
    ``n_critic * m`` real examples gives ``n_critic`` critic steps on fresh chunks of
    ``m``, then one generator step of ``m`` samples.

    Args:
        generator, discriminator (the critic), num_classes, seed: as for ``GAN``.
        n_critic: critic steps per generator step; the batch size must be a multiple of it.
        gp_weight: lambda, the weight of the penalty.

    Metrics: ``critic_loss``, ``g_loss``, ``gp``, ``w_distance`` (the critic's estimate
    ``mean D(real) - mean D(fake)``).
    """

    metric_names = ("critic_loss", "g_loss", "gp", "w_distance")

    def __init__(self, generator, discriminator, n_critic: int = 5, gp_weight: float = 10.0, **kwargs):
        kwargs.pop("label_smoothing", None), kwargs.pop("label_flip", None)
        super().__init__(generator, discriminator, **kwargs)
        self.n_critic = _positive_int("n_critic", n_critic)
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}.")
        self.gp_weight = float(gp_weight)

    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        super().compile(d_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.9),
                        g_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.9), **kwargs)

    def _critic_step(self, real, labels):
        import tensorflow as tf

        fake = self.generator(self._with_labels(self.noise(ops.shape(real)[0]), labels), training=True)
        with tf.GradientTape() as tape:
            real_score = ops.mean(self.discriminator(self._with_labels(real, labels), training=True))
            extra = self._extra_losses()  # read after each call: a call replaces the previous call's losses
            fake_score = ops.mean(self.discriminator(self._with_labels(fake, labels), training=True))
            extra = extra + self._extra_losses()
            gp = gradient_penalty(self.discriminator, real, fake, seed=self.seed_generator, labels=labels)
            loss = fake_score - real_score + self.gp_weight * gp
            total = loss + extra
        grads = tape.gradient(total, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)
        return loss, gp, real_score - fake_score

    def generator_objective(self, fake_logits):
        return -ops.mean(fake_logits)

    def train_step(self, data):
        x, labels = self._split(data)
        n = ops.shape(x)[0]
        m = n // self.n_critic
        if x.shape[0] is not None and x.shape[0] % self.n_critic:
            raise ValueError(f"batch size {x.shape[0]} must be a multiple of n_critic={self.n_critic}; "
                             "drop the last partial batch or pick a multiple.")
        for i in range(self.n_critic):  # a Python loop: n_critic is fixed, so it unrolls once at tracing
            chunk = x[i * m: (i + 1) * m]
            chunk_labels = labels[i * m: (i + 1) * m] if self.num_classes else None
            loss, gp, w = self._critic_step(chunk, chunk_labels)
        g_loss = self._g_step(m, labels[:m] if self.num_classes else None)
        for name, value in zip(self.metric_names, (loss, g_loss, gp, w)):
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def get_config(self):
        config = super().get_config()
        for key in ("label_smoothing", "label_flip"):
            config.pop(key)
        return {**config, "n_critic": self.n_critic, "gp_weight": self.gp_weight}
