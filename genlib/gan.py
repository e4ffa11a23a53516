"""Generative adversarial networks: DCGAN, WGAN-GP, class-conditional GANs, feature quantisation.

Chapter 3 (chapters/03_gan.ipynb); chapter 16 (chapters/16_synthetic_data.ipynb) reuses the
conditional GAN.

A generator ``G`` maps noise ``z`` to an image; a discriminator (critic) ``D`` scores images.
They are trained against each other, so a GAN needs two optimizers and writes its own
training step (``training_step``, run by ``fit`` on every Keras backend); gradients come from
``_util.value_and_grad`` and ``_util.input_gradient``, all the math from ``keras.ops``.

* ``build_generator`` / ``build_discriminator``: DCGAN-style convolutional nets, optionally
  class-conditional (a label embedding for ``G``, one-hot label channels or a projection for
  ``D``) and with feature quantisation inside ``D``: the ``VectorQuantizer`` of
  ``genlib.vq`` with an EMA dictionary drawn from the first batch (FQ-GAN).
* ``build_mlp_generator`` / ``build_mlp_discriminator``: small MLPs for 2-D toy data.
* ``discriminator_loss`` / ``generator_loss``: the non-saturating GAN losses, with label
  smoothing.
* ``interpolates`` / ``gradient_penalty``: WGAN-GP's penalty on points drawn uniformly on
  the segments between real and fake examples.
* ``GAN`` (non-saturating loss, label smoothing and label flipping, FQ's commitment loss) and
  ``WGANGP`` (Wasserstein loss, gradient penalty, ``n_critic`` critic steps per generator step).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from genlib import _util
from genlib.vq import VectorQuantizer

# ---------------------------------------------------------------------------
# Networks


def _check_image_shape(image_shape):
    image_shape = _util.shape("image_shape", image_shape, 3)
    if image_shape[0] != image_shape[1] or image_shape[0] % 4:
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
    latent_dim = _util.positive_int("latent_dim", latent_dim)
    size, _, channels = _check_image_shape(image_shape)
    filters = _util.positive_int("filters", filters)
    num_classes = _util.positive_int("num_classes", num_classes, 0)
    z = keras.Input((latent_dim,), name="z")
    inputs, h = [z], z
    if num_classes:
        label = keras.Input((), dtype="int32", name="label")
        inputs.append(label)
        label_dim = _util.positive_int("label_dim", label_dim)
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
        feature_quantization: ``None``, or keyword arguments of ``genlib.vq.VectorQuantizer``
            (e.g. ``{"num_codes": 64}``): the (S/4, S/4, 2f) feature map is quantised by a layer
            named ``"fq"``. FQ-GAN's defaults apply unless given: an EMA dictionary
            (``ema=True, decay=0.9``) drawn from the first batch (``init_from_data=True``).

    Inputs images (batch, S, S, C) in [-1, 1] [and labels (batch,) int]; output (batch, 1) logits.
    """
    size, _, channels = _check_image_shape(image_shape)
    filters = _util.positive_int("filters", filters)
    num_classes = _util.positive_int("num_classes", num_classes, 0)
    dropout = _util.fraction("dropout", dropout)
    if feature_quantization is not None and not isinstance(feature_quantization, dict):
        raise ValueError(f"feature_quantization must be None or a dict of VectorQuantizer arguments, "
                         f"got {feature_quantization!r}.")
    conditioning = _util.choice("conditioning", conditioning, ("channels", "projection"))
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
        options = {"num_codes": 64, "ema": True, "decay": 0.9, "init_from_data": True, **feature_quantization}
        h, _ = VectorQuantizer(code_dim=2 * filters, name="fq", **options)(h)
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
    z = keras.Input((_util.positive_int("latent_dim", latent_dim),), name="z")
    h = z
    for _ in range(_util.positive_int("depth", depth)):
        h = layers.Dense(_util.positive_int("units", units), activation="relu")(h)
    return keras.Model(z, layers.Dense(_util.positive_int("data_dim", data_dim))(h), name=name)


def build_mlp_discriminator(data_dim: int = 2, units: int = 64, depth: int = 2,
                            name: str = "discriminator") -> keras.Model:
    """MLP discriminator for toy data: ``depth`` LeakyReLU layers, one logit. (batch, data_dim) -> (batch, 1)."""
    x = keras.Input((_util.positive_int("data_dim", data_dim),), name="x")
    h = x
    for _ in range(_util.positive_int("depth", depth)):
        h = layers.LeakyReLU(0.2)(layers.Dense(_util.positive_int("units", units))(h))
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
    real, fake = ops.convert_to_tensor(real), ops.convert_to_tensor(fake)
    alpha = ops.reshape(ops.cast(alpha, real.dtype), (-1,) + (1,) * (len(real.shape) - 1))
    return real + alpha * (fake - real)


def gradient_penalty(critic, real, fake, alpha=None, seed=None, labels=None):
    """WGAN-GP's penalty ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` at ``x_hat`` on the real–fake segments.

    Args:
        critic: a model scoring a batch, (batch, ...) -> (batch, 1); with ``labels`` it is
            called on ``[x, labels]``.
        real, fake: (batch, ...) tensors or arrays of the same shape.
        alpha: (batch,) positions on the segments; drawn **uniformly in [0, 1]** when None.
        seed: int or ``keras.random.SeedGenerator`` for alpha.
        labels: (batch,) class labels for a conditional critic.

    The penalty is differentiable w.r.t. the critic's weights (a critic step trains through it).
    """
    if tuple(real.shape) != tuple(fake.shape):
        raise ValueError(f"real and fake must have the same shape, got {real.shape} and {fake.shape}.")
    if alpha is None:
        alpha = keras.random.uniform((ops.shape(real)[0],), 0.0, 1.0, seed=seed)
    x_hat = interpolates(real, fake, alpha)
    # training=False: the penalty measures the critic's slope, so no dropout mask or feature
    # dictionary may change while the gradient is taken.
    score = (lambda x: critic([x, labels], training=False)) if labels is not None else \
        (lambda x: critic(x, training=False))
    grads = _util.input_gradient(score, x_hat)  # d D(x_hat) / d x_hat, one gradient per example
    norms = ops.sqrt(ops.sum(ops.reshape(grads, (ops.shape(grads)[0], -1)) ** 2, axis=1) + 1e-12)
    return ops.mean((norms - 1.0) ** 2)


# ---------------------------------------------------------------------------
# Models


@keras.saving.register_keras_serializable(package="genlib")
class GAN(_util.TrainStepModel):
    """A GAN trained with the non-saturating loss: one discriminator step, then one generator step.

    Args:
        generator: z (batch, latent_dim) [and labels] -> samples.
        discriminator: samples [and labels] -> (batch, 1) logits.
        num_classes: > 0 for class-conditional nets (``fit((x, y))``; fakes get the batch's labels).
        label_smoothing: D's target for real examples is ``1 - label_smoothing`` (one-sided).
        label_flip: probability of swapping each real/fake target in D's loss (label noise).
        commitment_weight: beta of feature quantisation's commitment loss
            ``beta * mean((h - sg(q))^2)``, added to D's loss for every ``VectorQuantizer`` in D
            (none: no effect).
        seed: seed of the noise, labels and flips drawn during training.

    ``compile(d_optimizer=..., g_optimizer=...)``; ``fit(x)`` or ``fit((x, y))``; ``call(z)``
    (or ``call([z, labels])``) runs the generator; ``generate(n)`` samples.
    Metrics: ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (mean D output on each).
    """

    metric_names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, generator, discriminator, num_classes: int = 0, label_smoothing: float = 0.0,
                 label_flip: float = 0.0, commitment_weight: float = 0.25, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(generator, keras.Model) or not isinstance(discriminator, keras.Model):
            raise ValueError(f"generator and discriminator must be keras Models, got "
                             f"{type(generator).__name__} and {type(discriminator).__name__}.")
        self.generator, self.discriminator = generator, discriminator
        self.num_classes = _util.positive_int("num_classes", num_classes, 0)
        conditional_nets = len(generator.inputs) == 2, len(discriminator.inputs) == 2
        if conditional_nets != (bool(self.num_classes),) * 2:
            raise ValueError(f"num_classes={num_classes} needs {'two' if self.num_classes else 'one'} inputs "
                             f"in both nets, got {len(generator.inputs)} (generator) and "
                             f"{len(discriminator.inputs)} (discriminator).")
        self.label_smoothing = _util.fraction("label_smoothing", label_smoothing, 0.5)
        self.label_flip = _util.fraction("label_flip", label_flip, 0.5)
        self.commitment_weight = _util.number("commitment_weight", commitment_weight, low=0.0)
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Feature quantisation: D also returning what each quantiser saw (h) and gave (q), which
        # the commitment loss needs. It shares D's layers and weights.
        quantizers = [layer for layer in discriminator.layers if isinstance(layer, VectorQuantizer)]
        self.discriminator_features = None
        if quantizers:
            seen = [t for q in quantizers for t in (q.input, q.output[0])]
            self.discriminator_features = keras.Model(discriminator.input, [discriminator.output, *seen],
                                                     name="discriminator_features")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.built = True  # both nets arrive built; there is nothing else to create

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        """Two optimizers: ``d_optimizer`` for the discriminator, ``g_optimizer`` for the generator."""
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)
        # fit sees one optimizer; the group carries both optimizers' slots through the step.
        super().compile(optimizer=_util.OptimizerGroup([self.d_optimizer, self.g_optimizer]), **kwargs)

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
        """``n`` latent vectors z ~ N(0, I): (n, latent_dim)."""
        return keras.random.normal((n, self.latent_dim), seed=self.seed_generator)

    def discriminate(self, images, labels=None, training=False):
        """D's logits (batch, 1) and the commitment loss of its feature quantisers (0.0 without any)."""
        inputs = self._with_labels(images, labels)
        if self.discriminator_features is None:
            return self.discriminator(inputs, training=training), 0.0
        logits, *seen = self.discriminator_features(inputs, training=training)
        commitment = sum(ops.mean(ops.square(h - ops.stop_gradient(q))) for h, q in zip(seen[0::2], seen[1::2]))
        return logits, self.commitment_weight * commitment

    def discriminator_step(self, real, labels=None):
        """One update of D on real images and as many fakes: returns (loss, mean D(real), mean D(fake))."""
        n = ops.shape(real)[0]
        fake = self.generator(self._with_labels(self.noise(n), labels), training=True)
        flip = keras.random.uniform((n, 1), seed=self.seed_generator) < self.label_flip if self.label_flip else None

        def loss_fn():
            real_logits, real_commitment = self.discriminate(real, labels, training=True)
            fake_logits, fake_commitment = self.discriminate(fake, labels, training=True)
            if flip is not None:  # label noise: a flipped example swaps roles in the loss
                real_logits, fake_logits = ops.where(flip, fake_logits, real_logits), \
                    ops.where(flip, real_logits, fake_logits)
            loss = discriminator_loss(real_logits, fake_logits, self.label_smoothing)
            return loss + real_commitment + fake_commitment, (loss, real_logits, fake_logits)

        weights = self.discriminator.trainable_variables
        _, (loss, real_logits, fake_logits), grads = _util.value_and_grad(loss_fn, weights)
        self.d_optimizer.apply(grads, weights)
        return loss, ops.mean(ops.sigmoid(real_logits)), ops.mean(ops.sigmoid(fake_logits))

    def generator_step(self, n, labels=None):
        """One update of G on ``n`` fakes (with ``labels`` for a conditional GAN): returns G's loss."""
        z = self.noise(n)

        def loss_fn():
            fake = self.generator(self._with_labels(z, labels), training=True)
            # training=False: the generator's step must not move D's dictionary or dropout masks.
            return self.generator_objective(self.discriminator(self._with_labels(fake, labels), training=False))

        weights = self.generator.trainable_variables
        loss, _, grads = _util.value_and_grad(loss_fn, weights)
        self.g_optimizer.apply(grads, weights)
        return loss

    def generator_objective(self, fake_logits):
        return generator_loss(fake_logits)

    def training_step(self, data):
        real, labels = self._split(data)
        d_loss, d_real, d_fake = self.discriminator_step(real, labels)
        g_loss = self.generator_step(ops.shape(real)[0], labels)
        return self._log(d_loss, g_loss, d_real, d_fake)

    def _log(self, *values):
        for name, value in zip(self.metric_names, values):
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def generate(self, n: int, *, seed=None, batch_size: int = 500, progress=None, labels=None) -> np.ndarray:
        """``n`` samples G(z), z ~ N(0, I), as a NumPy array (images in [-1, 1], the tanh's range).

        Args:
            n: number of samples.
            seed: int for reproducible samples (the same seed gives the same samples); None
                draws from the model's own seed generator.
            batch_size: samples per generator call.
            progress: show a progress bar (None: the book's default, quiet under ``smoke``).
            labels: (n,) int class of each sample; required for a conditional GAN.
        """
        n = _util.positive_int("n", n)
        batch_size = _util.positive_int("batch_size", batch_size)
        if self.num_classes:
            if labels is None:
                raise ValueError("a conditional GAN needs labels (n,) to generate.")
            labels = np.asarray(labels, dtype="int32").reshape(-1)
            if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"labels must be (n,) = ({n},) ints in [0, {self.num_classes - 1}], "
                                 f"got shape {labels.shape}.")
        # All the noise at once, so the samples of a seed do not depend on batch_size.
        z = ops.convert_to_numpy(keras.random.normal((n, self.latent_dim), seed=seed if seed is not None
                                                      else self.seed_generator))
        out = []
        with _util.Progress(n, enabled=progress, unit="sample", label="GAN samples") as bar:
            for i in range(0, n, batch_size):
                inputs = [z[i: i + batch_size], labels[i: i + batch_size]] if self.num_classes else z[i: i + batch_size]
                out.append(ops.convert_to_numpy(self.generator(inputs, training=False)))
                bar.update(min(n, i + batch_size))
        return np.concatenate(out)

    def get_config(self):
        return {**super().get_config(), "generator": keras.saving.serialize_keras_object(self.generator),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator),
                "num_classes": self.num_classes, "label_smoothing": self.label_smoothing,
                "label_flip": self.label_flip, "commitment_weight": self.commitment_weight, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**_util.deserialize(config, "generator", "discriminator"))


@keras.saving.register_keras_serializable(package="genlib")
class WGANGP(GAN):
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

    The critic maximises ``mean D(real) - mean D(fake)`` minus ``gp_weight`` times the
    gradient penalty; the generator maximises ``mean D(fake)``. Each batch of
    ``n_critic * m`` real examples gives ``n_critic`` critic steps on fresh chunks of
    ``m``, then one generator step of ``m`` samples.

    Args:
        generator, discriminator (the critic), num_classes, commitment_weight, seed: as for ``GAN``.
        n_critic: critic steps per generator step; the batch size must be a multiple of it.
        gp_weight: lambda, the weight of the penalty.

    Metrics: ``critic_loss``, ``g_loss``, ``gp``, ``w_distance`` (the critic's estimate
    ``mean D(real) - mean D(fake)``).
    """

    metric_names = ("critic_loss", "g_loss", "gp", "w_distance")

    def __init__(self, generator, discriminator, n_critic: int = 5, gp_weight: float = 10.0, **kwargs):
        kwargs.pop("label_smoothing", None), kwargs.pop("label_flip", None)
        super().__init__(generator, discriminator, **kwargs)
        self.n_critic = _util.positive_int("n_critic", n_critic)
        self.gp_weight = _util.number("gp_weight", gp_weight, low=0.0)

    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        super().compile(d_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.9),
                        g_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.9), **kwargs)

    def critic_step(self, real, labels=None):
        """One update of the critic on real images and as many fakes: returns (loss, gp, w_distance)."""
        fake = self.generator(self._with_labels(self.noise(ops.shape(real)[0]), labels), training=True)

        def loss_fn():
            real_logits, real_commitment = self.discriminate(real, labels, training=True)
            fake_logits, fake_commitment = self.discriminate(fake, labels, training=True)
            real_score, fake_score = ops.mean(real_logits), ops.mean(fake_logits)
            gp = gradient_penalty(self.discriminator, real, fake, seed=self.seed_generator, labels=labels)
            loss = fake_score - real_score + self.gp_weight * gp
            return loss + real_commitment + fake_commitment, (loss, gp, real_score - fake_score)

        weights = self.discriminator.trainable_variables
        _, (loss, gp, w_distance), grads = _util.value_and_grad(loss_fn, weights)
        self.d_optimizer.apply(grads, weights)
        return loss, gp, w_distance

    def generator_objective(self, fake_logits):
        return -ops.mean(fake_logits)

    def training_step(self, data):
        x, labels = self._split(data)
        n = ops.shape(x)[0]
        m = n // self.n_critic
        if x.shape[0] is not None and x.shape[0] % self.n_critic:
            raise ValueError(f"batch size {x.shape[0]} must be a multiple of n_critic={self.n_critic}; "
                             "drop the last partial batch or pick a multiple.")
        for i in range(self.n_critic):  # a Python loop: n_critic is fixed, so it unrolls once at tracing
            chunk = x[i * m: (i + 1) * m]
            chunk_labels = labels[i * m: (i + 1) * m] if self.num_classes else None
            loss, gp, w = self.critic_step(chunk, chunk_labels)
        g_loss = self.generator_step(m, labels[:m] if self.num_classes else None)
        return self._log(loss, g_loss, gp, w)

    def get_config(self):
        config = super().get_config()
        for key in ("label_smoothing", "label_flip"):
            config.pop(key)
        return {**config, "n_critic": self.n_critic, "gp_weight": self.gp_weight}
