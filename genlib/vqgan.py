"""VQ-GAN: a VQ-VAE tokenizer trained with perceptual and adversarial losses, and a GPT prior over its tokens.

Chapter 10 (chapters/10_vq.ipynb), after the VQ-VAE of ``genlib.vq``.

A squared-error decoder predicts the *mean* of the images that fit a token grid, and a mean of
plausible images is a blurred image. VQ-GAN (Esser et al. 2021) keeps the VQ-VAE's encoder,
quantiser and decoder and changes what the decoder is asked for:

* ``perceptual_loss``: distances between *features* of a fixed network (LPIPS uses VGG; this
  book has no downloadable weights and uses the early layers of its own Fashion-MNIST domain
  classifier, ``genlib.metrics.hidden_features_model``).
* ``build_patch_discriminator``: the DCGAN discriminator of ``genlib.gan`` with its dense head
  replaced by a convolution, so it scores every patch of the image, not the image as a whole.
  ``hinge_discriminator_loss`` / ``hinge_generator_loss`` (or the non-saturating losses of
  ``genlib.gan``).
* ``adaptive_weight``: lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta) at the decoder's last
  layer G_L, so the adversarial term pulls on the decoder about as hard as the reconstruction does.
* ``VQGAN``: a ``genlib.vq.VQVAE`` (same networks, ``encode``/``decode``) whose training step,
  written once for every Keras backend, alternates a discriminator step and an autoencoder step
  on ``L_rec + L_VQ + disc_factor * w * lambda * L_GAN``, with the discriminator switched on
  after ``disc_start`` steps.
* ``GPTPrior``: the GPT of ``genlib.transformer`` over the raster-ordered token grid, started by a
  start-of-grid token; sampling with temperature and top-k; exact log-likelihood per grid.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from genlib import _util, gan
from genlib.transformer import GPT
from genlib.vq import VQVAE, codebook_perplexity, codes_used, vq_losses

# ---------------------------------------------------------------------------
# The discriminator and its losses


def build_patch_discriminator(image_shape=(28, 28, 1), filters: int = 32, name: str = "patch_discriminator"):
    """A PatchGAN discriminator: one logit per image patch.

    The two strided 4×4 convolutions with LeakyReLU of ``genlib.gan.build_discriminator``
    (reused, not copied), then a 3×3 convolution to one channel instead of flatten + dense.
    Each logit sees an 18×18 window of the image (receptive field 4 + 3·2 = 10 after the
    strided layers, + 2·4 for the 3×3 on the stride-4 grid): it judges local texture, which is
    what a reconstruction gets wrong when it blurs.

    Args:
        image_shape: (S, S, C), S divisible by 4; images in [0, 1].
        filters: channels of the first convolution (the second has twice as many).

    Shapes: (batch, S, S, C) -> (batch, S/4, S/4, 1) logits.
    """
    trunk = gan.build_discriminator(image_shape, filters=filters)
    flatten = next(layer for layer in trunk.layers if isinstance(layer, layers.Flatten))
    logits = layers.Conv2D(1, 3, padding="same", name="patch_logits")(flatten.input)
    return keras.Model(trunk.input, logits, name=name)


def hinge_discriminator_loss(real_logits, fake_logits):
    """Hinge loss of D: ``mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))`` (over patches and examples).

    D is satisfied once real patches score above +1 and fakes below -1: no gradient from
    examples it already separates with a margin.
    """
    return ops.mean(ops.relu(1.0 - real_logits)) + ops.mean(ops.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits):
    """The generator's side of the hinge GAN: ``-mean D(x_hat)``."""
    return -ops.mean(fake_logits)


GAN_LOSSES = {"hinge": (hinge_discriminator_loss, hinge_generator_loss),
              "non_saturating": (gan.discriminator_loss, gan.generator_loss)}


# ---------------------------------------------------------------------------
# The perceptual loss


def perceptual_loss(feature_model, x, y, epsilon: float = 1e-6):
    """LPIPS-style distance between images: compare normalised features, not pixels.

    For each feature map ``f_l`` (batch, h, w, C_l) of ``feature_model``, every position's
    C_l-vector is scaled to unit length, ``n(f) = f / sqrt(|f|^2 + epsilon)``; the loss is
    ``sum_l mean_{batch, positions} |n(f_l(x)) - n(f_l(y))|^2``. LPIPS (Zhang et al. 2018)
    does the same on VGG features with learned per-channel weights; here all channels count
    alike.

    Args:
        feature_model: a Keras model images -> a list of feature maps (e.g.
            ``genlib.metrics.hidden_features_model()``); it is not trained by this loss.
        x, y: images (batch, H, W, C) in the feature model's convention.
        epsilon: keeps the normalisation finite where a feature vector is 0.

    Returns a scalar: 0 for identical images, growing as their features differ.
    """
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    if tuple(x.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(f"x and y must have the same image shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    n = ops.shape(x)[0]
    features = feature_model(ops.concatenate([x, y], axis=0), training=False)  # one pass for both
    features = features if isinstance(features, (list, tuple)) else [features]
    total = 0.0
    for f in features:
        f = f / ops.sqrt(ops.sum(ops.square(f), axis=-1, keepdims=True) + epsilon)
        total = total + ops.mean(ops.sum(ops.square(f[:n] - f[n:]), axis=-1))
    return total


# ---------------------------------------------------------------------------
# The adaptive weight


def gradient_norm(grads):
    """The Euclidean norm of a list of gradient tensors, taken together (a None counts as 0)."""
    return ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads if g is not None))


def adaptive_weight(rec_loss_fn, gan_loss_fn, weights, delta: float = 1e-4, max_weight: float = 1e4):
    """lambda = ||grad_W L_rec|| / (||grad_W L_GAN|| + delta), clipped to [0, max_weight], without gradient.

    Args:
        rec_loss_fn, gan_loss_fn: functions of no arguments returning the reconstruction loss and
            the generator's adversarial loss; they read ``weights`` (Keras variables).
        weights: the variables G_L at which both gradients are measured: in VQ-GAN, the kernel of
            the decoder's last layer (Esser et al.).
        delta: keeps lambda finite when the adversarial gradient vanishes.
        max_weight: an upper bound on lambda (Esser et al. clip at 1e4).

    The two gradients are taken one after the other with ``_util.value_and_grad``; lambda is a
    constant for the step's update (stop-gradient), so ``lambda * L_GAN`` pulls on G_L with
    exactly the strength of ``L_rec``.
    """
    weights = list(weights)
    _, _, rec_grads = _util.value_and_grad(rec_loss_fn, weights)
    _, _, gan_grads = _util.value_and_grad(gan_loss_fn, weights)
    ratio = gradient_norm(rec_grads) / (gradient_norm(gan_grads) + delta)
    return ops.stop_gradient(ops.clip(ratio, 0.0, max_weight))


# ---------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="genlib")
class VQGAN(_util.TrainStepModel, VQVAE):
    """A VQ-VAE trained as a VQ-GAN: L1 + perceptual reconstruction, and a patch discriminator.

    The networks, ``encode``, ``decode``, ``reconstruct`` and ``bits_per_image`` are the
    ``VQVAE``'s (same arguments; the two differ only in the loss). Each training step:

    1. lambda, by ``adaptive_weight`` at the decoder's last convolution (its kernel G_L);
    2. one discriminator step on real images and the current reconstructions:
       ``disc_factor * L_D``;
    3. one autoencoder step on ``L_rec + L_VQ + disc_factor * disc_weight * lambda * L_GAN`` with
       ``L_rec = |x - x_hat|_1 + perceptual_weight * perceptual_loss(x, x_hat)`` and ``L_VQ`` the
       VQ-VAE's codebook (without EMA) and beta-weighted commitment losses.

    ``disc_factor`` is 0 for the first ``disc_start`` autoencoder steps and 1 after: the
    discriminator neither trains nor pushes until the reconstructions are worth judging.

    Args:
        image_shape, num_codes, code_dim, filters, grid_shape, beta, ema, decay, restart_threshold,
            seed: as for ``genlib.vq.VQVAE``.
        discriminator: a Keras model images -> patch logits; None: ``build_patch_discriminator``.
        perceptual: a Keras model images -> list of feature maps (frozen), e.g.
            ``genlib.metrics.hidden_features_model()``; None: no perceptual term.
        perceptual_weight: weight of the perceptual term inside L_rec.
        disc_weight: w, the adversarial weight on top of the adaptive lambda (Esser et al.: 0.8).
        disc_start: autoencoder steps before the discriminator is switched on.
        gan_loss: ``"hinge"`` or ``"non_saturating"``.
        delta, max_weight: of ``adaptive_weight``.

    ``compile(g_optimizer=..., d_optimizer=...)``; ``fit(x)`` on images in [0, 1]. Tracked:
    ``loss``, ``recon_mse``, ``l1``, ``perceptual``, ``g_gan``, ``d_loss``, ``adaptive_weight``,
    ``commitment_loss``, ``perplexity``, ``codes_used``.
    """

    metric_names = ("loss", "recon_mse", "l1", "perceptual", "g_gan", "d_loss", "adaptive_weight",
                    "commitment_loss", "perplexity", "codes_used")

    def __init__(self, image_shape=(28, 28, 1), num_codes: int = 64, code_dim: int = 16, filters=(32, 64),
                 beta: float = 0.25, ema: bool = True, decay: float = 0.99, restart_threshold: float = 0.1,
                 seed=None, grid_shape=None, discriminator=None, perceptual=None, perceptual_weight: float = 1.0,
                 disc_weight: float = 0.8, disc_start: int = 0, gan_loss: str = "hinge", delta: float = 1e-4,
                 max_weight: float = 1e4, **kwargs):
        super().__init__(image_shape=image_shape, num_codes=num_codes, code_dim=code_dim, filters=filters, beta=beta,
                         ema=ema, decay=decay, restart_threshold=restart_threshold, seed=seed,
                         grid_shape=grid_shape, **kwargs)
        discriminator = build_patch_discriminator(self.image_shape) if discriminator is None else discriminator
        for label, net in (("discriminator", discriminator), ("perceptual", perceptual)):
            if net is not None and not isinstance(net, keras.Model):
                raise ValueError(f"{label} must be a keras Model or None, got {type(net).__name__}.")
        self.discriminator, self.perceptual = discriminator, perceptual
        if perceptual is not None:
            perceptual.trainable = False  # a fixed measuring stick, never trained by the autoencoder's loss
        self.perceptual_weight = _util.number("perceptual_weight", perceptual_weight, low=0.0)
        self.disc_weight = _util.number("disc_weight", disc_weight, low=0.0)
        self.disc_start = _util.positive_int("disc_start", disc_start, 0)
        self.gan_loss = _util.choice("gan_loss", gan_loss, tuple(GAN_LOSSES))
        self.delta = _util.number("delta", delta, low=0.0, low_open=True)
        self.max_weight = _util.number("max_weight", max_weight, low=0.0, low_open=True)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}

    def compile(self, g_optimizer=None, d_optimizer=None, **kwargs):
        """Two optimizers: ``g_optimizer`` for encoder, decoder (and a gradient-trained codebook); ``d_optimizer``."""
        if not self.built:
            self.build()
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
        self.g_optimizer.build(self.generator_weights)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        super().compile(optimizer=_util.OptimizerGroup([self.d_optimizer, self.g_optimizer]), **kwargs)

    def get_compile_config(self):
        return None  # the optimizers are chosen again after loading: a saved model is for encoding and decoding

    @property
    def generator_weights(self):
        """What the autoencoder step trains: encoder, decoder and (without EMA) the codebook."""
        return (self.encoder.trainable_variables + self.decoder.trainable_variables
                + self.quantizer.trainable_variables)

    @property
    def last_layer(self):
        """G_L: the decoder's last convolution, where the adaptive weight is measured."""
        return self.decoder.layers[-1]

    def decoder_features(self, z_q, training=False):
        """The decoder up to (not including) its last layer: the input h of G_L."""
        h = z_q
        for layer in self.decoder.layers[:-1]:
            h = layer(h, training=training)
        return h

    def reconstruction_loss(self, x, x_hat):
        """``(L_rec, l1, perceptual)``: ``L_rec = |x - x_hat|_1 + perceptual_weight * perceptual``, batch means."""
        x, x_hat = ops.convert_to_tensor(x), ops.convert_to_tensor(x_hat)  # NumPy - tensor fails on torch
        l1 = ops.mean(ops.abs(x - x_hat))
        if self.perceptual is None or self.perceptual_weight == 0:
            return l1, l1, ops.zeros(())
        p = perceptual_loss(self.perceptual, x, x_hat)
        return l1 + self.perceptual_weight * p, l1, p

    def disc_factor(self):
        """1.0 once the autoencoder has taken ``disc_start`` steps, else 0.0 (a tensor: no Python branch)."""
        return ops.cast(self.g_optimizer.iterations >= self.disc_start, "float32")

    def adaptive_weight_for(self, x):
        """lambda for images ``x`` at the current weights, and the reconstructions x_hat it was measured on."""
        x = ops.convert_to_tensor(x)
        z_q, _ = self.quantizer(self.encoder(x, training=False), training=False)
        h = ops.stop_gradient(self.decoder_features(z_q))
        # Only G_L sits between h and x_hat, so gradients w.r.t. its kernel computed from h equal
        # those of the whole network, at the cost of the last layer, D and the perceptual net.
        last = self.last_layer
        _, g_loss = GAN_LOSSES[self.gan_loss]
        lam = adaptive_weight(lambda: self.reconstruction_loss(x, last(h))[0],
                              lambda: g_loss(self.discriminator(last(h), training=False)),
                              [last.kernel], self.delta, self.max_weight)
        return lam, ops.stop_gradient(last(h))

    def discriminator_step(self, x, x_hat, factor):
        """One update of D on real ``x`` and reconstructions ``x_hat``; returns D's loss (before ``factor``)."""
        d_loss_fn, _ = GAN_LOSSES[self.gan_loss]

        def loss_fn():
            loss = d_loss_fn(self.discriminator(x, training=True), self.discriminator(x_hat, training=True))
            return factor * loss, loss

        weights = self.discriminator.trainable_variables
        _, loss, grads = _util.value_and_grad(loss_fn, weights)
        self.d_optimizer.apply(grads, weights)
        return loss

    def autoencoder_step(self, x, lam, factor):
        """One update of encoder, decoder (and codebook) on the VQ-GAN objective; returns a dict of its terms."""
        _, g_loss = GAN_LOSSES[self.gan_loss]

        def loss_fn():
            z_e = self.encoder(x, training=True)
            z_q, indices, codes = self.quantizer(z_e, training=True, return_codes=True)
            x_hat = self.decoder(z_q, training=True)
            rec, l1, p = self.reconstruction_loss(x, x_hat)
            codebook_loss, commitment_loss = vq_losses(z_e, codes)
            # training=False: the autoencoder's step must not move D.
            g_gan = g_loss(self.discriminator(x_hat, training=False))
            loss = rec + self.beta * commitment_loss + factor * self.disc_weight * lam * g_gan
            if not self.quantizer.ema:
                loss = loss + codebook_loss
            return loss, {"loss": loss, "recon_mse": ops.mean(ops.square(x - x_hat)), "l1": l1, "perceptual": p,
                          "g_gan": g_gan, "commitment_loss": commitment_loss,
                          "perplexity": codebook_perplexity(indices, self.num_codes),
                          "codes_used": codes_used(indices, self.num_codes)}

        weights = self.generator_weights
        _, logs, grads = _util.value_and_grad(loss_fn, weights)
        self.g_optimizer.apply(grads, weights)
        return logs

    def training_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        self._check_images(x)
        factor = self.disc_factor()
        lam, x_hat = self.adaptive_weight_for(x)
        d_loss = self.discriminator_step(x, x_hat, factor)
        logs = self.autoencoder_step(x, lam, factor)
        logs.update(d_loss=d_loss, adaptive_weight=lam)
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def compute_loss(self, *args, **kwargs):
        raise NotImplementedError("VQGAN trains with its own training_step (two optimizers); "
                                  "evaluate reconstructions with reconstruct() instead of evaluate().")

    def get_config(self):
        return {**super().get_config(), "discriminator": keras.saving.serialize_keras_object(self.discriminator),
                "perceptual": None if self.perceptual is None else keras.saving.serialize_keras_object(self.perceptual),
                "perceptual_weight": self.perceptual_weight, "disc_weight": self.disc_weight,
                "disc_start": self.disc_start, "gan_loss": self.gan_loss, "delta": self.delta,
                "max_weight": self.max_weight}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("discriminator", "perceptual"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# ---------------------------------------------------------------------------
# Stage two: a transformer over the token grid


@keras.saving.register_keras_serializable(package="genlib")
class GPTPrior(GPT):
    """The GPT of ``genlib.transformer`` as a prior over token grids, read in raster order.

    A grid (h, w) of codes in 0..K-1 becomes the sequence ``k_1 .. k_N`` (N = hw, row by row).
    The vocabulary is K + 1: token K is a start-of-grid token, ``bos``, so that the first code
    has a context too. The model sees ``[bos, k_1, .., k_{N-1}]`` and predicts ``[k_1, .., k_N]``:

        log p(k) = sum_{i=1}^{N} log softmax(GPT([bos, k_<i]))_{k_i}.

    Args:
        num_codes: K.
        grid_shape: (h, w).
        width, depth, num_heads, mlp_ratio, dropout: the GPT's (``genlib.transformer.GPT``).

    Train with ``fit(*prior.sequences(q_train))``. ``log_prob(q)`` gives nats per grid,
    ``bits_per_token(q)`` the mean in bits per code; ``generate(n, seed=..., temperature=...,
    top_k=...)`` returns grids (n, h, w, 1) int32 in 0..K-1.
    """

    def __init__(self, num_codes: int, grid_shape, width=128, depth=2, num_heads=4, mlp_ratio=4, dropout=0.0,
                 **kwargs):
        kwargs.pop("vocab_size", None), kwargs.pop("max_length", None)  # implied by num_codes and grid_shape
        self.num_codes = _util.positive_int("num_codes", num_codes, 2)
        self.grid_shape = _util.shape("grid_shape", grid_shape, 2)
        super().__init__(vocab_size=self.num_codes + 1, max_length=self.grid_shape[0] * self.grid_shape[1],
                         width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, **kwargs)

    @property
    def bos(self) -> int:
        """The start-of-grid token, K."""
        return self.num_codes

    def _flat(self, q) -> np.ndarray:
        q = np.asarray(q)
        q = q[..., 0] if q.ndim == 4 and q.shape[-1] == 1 else q
        if q.ndim != 3 or q.shape[1:] != self.grid_shape or not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"expected integer token grids (N, {self.grid_shape[0]}, {self.grid_shape[1]}[, 1]), "
                             f"got {q.dtype} of shape {q.shape}.")
        if q.min() < 0 or q.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes - 1}], got [{q.min()}, {q.max()}].")
        return q.reshape(len(q), -1).astype("int32")

    def sequences(self, q):
        """Token grids (N, h, w[, 1]) -> ``(inputs, targets)``, each (N, hw) int32; inputs = ``bos``, targets[:-1]."""
        targets = self._flat(q)
        inputs = np.concatenate([np.full((len(targets), 1), self.bos, "int32"), targets[:, :-1]], axis=1)
        return inputs, targets

    def log_prob(self, q, batch_size: int = 500) -> np.ndarray:
        """log p(k) in nats for each grid: (N,) float64."""
        inputs, targets = self.sequences(q)
        batch_size = _util.positive_int("batch_size", batch_size)
        out = []
        for i in range(0, len(inputs), batch_size):
            logits = self(ops.convert_to_tensor(inputs[i: i + batch_size]), training=False)
            log_p = ops.convert_to_numpy(ops.log_softmax(logits, axis=-1)).astype("float64")
            out.append(np.take_along_axis(log_p, targets[i: i + batch_size, :, None], axis=-1)[..., 0].sum(1))
        return np.concatenate(out)

    def bits_per_token(self, q, batch_size: int = 500) -> float:
        """Mean -log2 p per code over the grids ``q``."""
        n_tokens = self.grid_shape[0] * self.grid_shape[1]
        return float(-self.log_prob(q, batch_size).mean() / (n_tokens * math.log(2.0)))

    def generate(self, n: int, *, seed=None, batch_size: int = 500, progress=None, temperature: float = 1.0,
                 top_k=None, use_cache: bool = True, max_redraws: int = 20) -> np.ndarray:
        """``n`` token grids (n, h, w, 1) int32, sampled code by code in raster order from ``bos``.

        ``temperature`` and ``top_k`` as in ``genlib.transformer.choose_tokens``. The model never
        sees ``bos`` as a target, so training drives its probability towards 0; a sequence that
        contains it anyway is drawn again (up to ``max_redraws`` times), which samples exactly from
        the model's distribution given that no ``bos`` appears.
        """
        n = _util.positive_int("n", n)
        length = self.grid_shape[0] * self.grid_shape[1]
        options = dict(batch_size=batch_size, progress=progress, prompt=np.array([self.bos], "int32"),
                       length=length, temperature=temperature, top_k=top_k, use_cache=use_cache)
        tokens = GPT.generate(self, n, seed=seed, **options)[:, 1:]
        for attempt in range(_util.positive_int("max_redraws", max_redraws, 0) + 1):
            bad = np.flatnonzero((tokens == self.bos).any(axis=1))
            if not len(bad):
                return tokens.reshape(n, *self.grid_shape, 1).astype("int32")
            if attempt == max_redraws:
                break
            redraw_seed = None if seed is None else seed + 100_003 * (attempt + 1)
            tokens[bad] = GPT.generate(self, len(bad), seed=redraw_seed, **options)[:, 1:]
        raise RuntimeError(f"{len(bad)} of {n} grids still contain the start token after {max_redraws} redraws: "
                           "train the prior longer.")

    def get_config(self):
        config = super().get_config()
        config.pop("vocab_size"), config.pop("max_length")
        return {**config, "num_codes": self.num_codes, "grid_shape": self.grid_shape}
