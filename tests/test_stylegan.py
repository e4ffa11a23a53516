"""Tests of genlib.stylegan, style_layers and discriminators: demodulation, AdaIN, the mapping network's
average and truncation, style mixing, noise inputs, minibatch std, spectral normalisation, self-attention,
R1, the training step (lazy R1, EMA), generate, saving and bad arguments. Backend-neutral: they run under
TensorFlow, JAX and PyTorch."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from genlib import discriminators, style_layers, stylegan, training


def _np(x):
    return ops.convert_to_numpy(x)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _tiny_model(seed=0, sagan=False, **kwargs):
    """An 8x8 StyleGAN small enough to train in a test: mapping 2 layers, synthesis (16, 8), D (8, 8).

    ``sagan``: a discriminator with self-attention and spectral normalisation.
    """
    keras.utils.set_random_seed(seed)
    mapping = stylegan.MappingNetwork(z_dim=8, w_dim=8, depth=2)
    synthesis = stylegan.SynthesisNetwork(channels=(16, 8), w_dim=8, seed=seed)
    options = {"attention_resolution": 8, "spectral_norm": True} if sagan else {}
    discriminator = discriminators.build_discriminator((8, 8, 1), channels=(8, 8), mbstd_group=2, **options)
    return stylegan.StyleGAN(mapping, synthesis, discriminator, seed=seed, **kwargs)


@functools.lru_cache(maxsize=1)
def _untrained():
    return _tiny_model()


def _images(n=32, seed=1):
    """Smooth random 8x8 'images' in [-1, 1]."""
    x = _rng(seed).normal(size=(n, 4, 4, 1)).astype("float32")
    return np.tanh(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))


# ---------------------------------------------------------------------------
# Styles


def test_demodulated_conv_gives_unit_variance_per_output_channel():
    keras.utils.set_random_seed(0)
    layer = style_layers.ModulatedConv2D(6, kernel_size=3)
    x = _rng(0).normal(size=(64, 24, 24, 5)).astype("float32")  # unit variance, independent pixels
    w = _rng(1).normal(size=(64, 8)).astype("float32")
    layer(x[:1], w[:1])
    # Random styles far from 1, so the check is not passed by an unmodulated layer by accident.
    layer.affine.kernel.assign(_rng(2).normal(size=(8, 5)).astype("float32") * 3)
    y = _np(layer(x, w))[:, 1:-1, 1:-1]  # interior: zero padding lowers the variance at the border
    # Each image has its own weights: every (image, channel) variance is 1 up to sampling error
    # (a few hundred correlated pixels), and their average over the 64 images is 1 closely.
    per_image_channel = y.var(axis=(1, 2))  # (batch, filters)
    np.testing.assert_allclose(per_image_channel, 1.0, atol=0.4)  # worst of 20 seeds: 0.3
    np.testing.assert_allclose(per_image_channel.mean(axis=0), 1.0, atol=0.05)  # worst of 20 seeds: 0.025
    # Without demodulation the variance follows the styles (here far from 1).
    plain = style_layers.ModulatedConv2D(6, kernel_size=3, demodulate=False)
    plain(x[:1], w[:1])
    plain.affine.kernel.assign(layer.affine.kernel)
    plain.kernel.assign(layer.kernel)
    assert abs(_np(plain(x, w))[:, 1:-1, 1:-1].var() - 1.0) > 0.5


def test_modulated_conv_equals_a_convolution_with_per_image_modulated_weights():
    layer = style_layers.ModulatedConv2D(3, kernel_size=3)
    x = _rng(3).normal(size=(2, 5, 5, 4)).astype("float32")
    w = _rng(4).normal(size=(2, 6)).astype("float32")
    y = _np(layer(x, w))
    s = _np(layer.styles(w))
    weight = _np(layer.kernel) * layer.gain
    for b in range(2):
        wb = weight * s[b][None, None, :, None]
        wb = wb / np.sqrt((wb**2).sum(axis=(0, 1, 2), keepdims=True) + 1e-8)
        expected = _np(ops.conv(x[b:b + 1], wb, padding="same"))
        np.testing.assert_allclose(y[b:b + 1], expected, rtol=1e-4, atol=1e-5)


def test_adain_sets_each_channels_mean_and_std_to_the_style():
    x = (_rng(5).normal(size=(3, 6, 6, 4)) * 5 + 2).astype("float32")
    scale = _rng(6).uniform(0.5, 2.0, size=(3, 4)).astype("float32")
    bias = _rng(7).normal(size=(3, 4)).astype("float32")
    y = _np(style_layers.adain(x, scale, bias))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), bias, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2)), scale, rtol=1e-4)
    layer = style_layers.AdaIN()
    out = _np(layer(x, _rng(8).normal(size=(3, 5)).astype("float32")))
    assert out.shape == x.shape


# ---------------------------------------------------------------------------
# Mapping network, truncation, style mixing


def test_w_avg_update_is_the_exact_moving_average():
    mapping = stylegan.MappingNetwork(z_dim=4, w_dim=3, depth=2, w_avg_beta=0.9)
    mapping.build((None, 4))
    w1 = _rng(9).normal(size=(5, 3)).astype("float32")
    w2 = _rng(10).normal(size=(7, 3)).astype("float32")
    mapping.update_w_avg(w1)
    np.testing.assert_allclose(_np(mapping.w_avg), 0.1 * w1.mean(0), rtol=1e-5, atol=1e-7)
    mapping.update_w_avg(w2)
    np.testing.assert_allclose(_np(mapping.w_avg), 0.9 * 0.1 * w1.mean(0) + 0.1 * w2.mean(0), rtol=1e-5, atol=1e-7)


def test_truncation_psi_0_gives_w_avg_and_psi_1_is_the_identity():
    mapping = stylegan.MappingNetwork(z_dim=4, w_dim=3, depth=2)
    mapping.build((None, 4))
    mapping.w_avg.assign(np.array([0.5, -1.0, 2.0], "float32"))
    w = _rng(11).normal(size=(6, 3)).astype("float32")
    np.testing.assert_allclose(_np(mapping.truncate(w, 0.0)), np.tile([0.5, -1.0, 2.0], (6, 1)))
    np.testing.assert_allclose(_np(mapping.truncate(w, 1.0)), w, rtol=1e-6)
    np.testing.assert_allclose(_np(mapping.truncate(w, 0.5)), 0.5 * (w + [0.5, -1.0, 2.0]), rtol=1e-5)


def test_mapping_normalises_z_so_its_scale_does_not_matter():
    mapping = stylegan.MappingNetwork(z_dim=6, w_dim=4, depth=3)
    z = _rng(12).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(_np(mapping(z)), _np(mapping(3.0 * z)), rtol=1e-4, atol=1e-5)


def test_style_mixing_uses_w1_before_the_crossover_and_w2_after():
    w1 = _rng(13).normal(size=(4, 3)).astype("float32")
    w2 = _rng(14).normal(size=(4, 3)).astype("float32")
    crossover = np.array([0, 2, 3, 5])
    ws = _np(stylegan.mix_styles(w1, w2, crossover, 5))
    assert ws.shape == (4, 5, 3)
    for b, c in enumerate(crossover):
        for layer in range(5):
            np.testing.assert_array_equal(ws[b, layer], w1[b] if layer < c else w2[b])


def test_synthesis_layers_take_their_own_style():
    synthesis = stylegan.SynthesisNetwork(channels=(8, 8, 4), w_dim=5, seed=0)
    synthesis.build(None)
    assert synthesis.num_ws == 5 and synthesis.resolution == 16
    ws = _rng(15).normal(size=(2, 5, 5)).astype("float32")
    noise = [ops.zeros(s) for s in synthesis.noise_shapes(2)]
    base = _np(synthesis(ws, noise))
    for layer in range(5):  # changing any one layer's style changes the image
        changed = ws.copy()
        changed[:, layer] += 1.0
        assert np.abs(_np(synthesis(changed, noise)) - base).max() > 1e-4, layer
    # The same w for every layer equals passing one w.
    np.testing.assert_allclose(_np(synthesis(ws[:, 0], noise)), _np(synthesis(np.repeat(ws[:, :1], 5, 1), noise)),
                               rtol=1e-5, atol=1e-6)


def test_noise_inputs_act_only_through_their_learned_strength():
    synthesis = stylegan.SynthesisNetwork(channels=(8, 4), w_dim=5, seed=0)
    synthesis.build(None)
    ws = _rng(16).normal(size=(2, 5)).astype("float32")
    noise_a, noise_b = synthesis.draw_noise(2, seed=1), synthesis.draw_noise(2, seed=2)
    np.testing.assert_allclose(_np(synthesis(ws, noise_a)), _np(synthesis(ws, noise_b)), atol=1e-6)  # strength 0
    synthesis.convs[-1].noise_strength.assign(0.5)
    assert np.abs(_np(synthesis(ws, noise_a)) - _np(synthesis(ws, noise_b))).max() > 1e-3
    # An int seed reproduces the maps, and two layers of the same size still get different noise.
    again = synthesis.draw_noise(2, seed=1)
    for a, b in zip(noise_a, again):
        np.testing.assert_array_equal(_np(a), _np(b))
    assert synthesis.layer_resolutions == [4, 8, 8]
    assert np.abs(_np(noise_a[1]) - _np(noise_a[2])).max() > 0.1


def test_skip_outputs_add_up_to_the_image():
    synthesis = stylegan.SynthesisNetwork(channels=(8, 8, 4), w_dim=5, seed=0)
    ws = _rng(17).normal(size=(2, 5)).astype("float32")
    synthesis.build(None)
    noise = synthesis.draw_noise(2, seed=3)
    image, rgbs = synthesis(ws, noise, return_rgbs=True)
    assert [r.shape[1] for r in rgbs] == [4, 8, 16]
    total = rgbs[0]
    for rgb in rgbs[1:]:
        total = style_layers.upsample2x(total) + rgb
    np.testing.assert_allclose(_np(image), _np(total), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Discriminator blocks


def test_minibatch_std_matches_numpy():
    x = _rng(18).normal(size=(8, 2, 2, 3)).astype("float32")
    y = _np(discriminators.MinibatchStdDev(4)(x))
    assert y.shape == (8, 2, 2, 4)
    np.testing.assert_array_equal(y[..., :3], x)
    groups = x.reshape(4, 2, 2, 2, 3)  # image i in group i % 2
    stat = np.sqrt(groups.var(axis=0) + 1e-8).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(y[:, 0, 0, 3], np.tile(stat, 4), rtol=1e-5)
    assert np.all(y[..., 3] == y[:, :1, :1, 3])  # one number per image, constant over the map


def test_minibatch_std_sees_a_collapsed_batch():
    varied = _rng(19).normal(size=(4, 2, 2, 3)).astype("float32")
    collapsed = np.repeat(varied[:1], 4, axis=0)
    assert float(_np(discriminators.MinibatchStdDev(4)(collapsed))[0, 0, 0, 3]) < 1e-3
    assert float(_np(discriminators.MinibatchStdDev(4)(varied))[0, 0, 0, 3]) > 0.3


def test_power_iteration_converges_to_the_largest_singular_value():
    matrix = _rng(20).normal(size=(12, 7)).astype("float32")
    u = _rng(21).normal(size=(7,)).astype("float32")
    sigma, _ = discriminators.power_iteration(matrix, u, iterations=50)
    np.testing.assert_allclose(float(sigma), np.linalg.svd(matrix, compute_uv=False)[0], rtol=1e-4)


def test_spectral_conv_kernel_has_unit_spectral_norm_after_training_calls():
    keras.utils.set_random_seed(0)
    layer = discriminators.SpectralConv2D(5, 3)
    x = _rng(22).normal(size=(2, 6, 6, 4)).astype("float32")
    for _ in range(30):  # one power-iteration step per training call, u kept between calls
        layer(x, training=True)
    matrix = _np(ops.reshape(layer.normalized_kernel(), (-1, 5)))
    np.testing.assert_allclose(np.linalg.svd(matrix, compute_uv=False)[0], 1.0, rtol=1e-3)


def test_self_attention_starts_as_the_identity_and_attends_with_rows_summing_to_one():
    layer = discriminators.SelfAttention(key_ratio=4)
    x = _rng(23).normal(size=(2, 4, 4, 8)).astype("float32")
    np.testing.assert_allclose(_np(layer(x)), x, atol=1e-6)  # gamma = 0
    attention = _np(layer.attention(x))
    assert attention.shape == (2, 16, 16)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    layer.gamma.assign(1.0)
    assert np.abs(_np(layer(x)) - x).max() > 1e-3
    spectral = discriminators.SelfAttention(key_ratio=4, spectral_norm=True)
    assert _np(spectral(x)).shape == x.shape


@pytest.mark.parametrize("options", [{}, {"attention_resolution": 8, "spectral_norm": True}])
def test_discriminator_shapes(options):
    d = discriminators.build_discriminator((8, 8, 1), channels=(4, 8), **options)
    assert tuple(d.output.shape) == (None, 1)
    assert _np(d(_rng(24).normal(size=(4, 8, 8, 1)).astype("float32"))).shape == (4, 1)
    names = [layer.name for layer in d.layers]
    assert ("attention_8" in names) == ("attention_resolution" in options) and "mbstd" in names


# ---------------------------------------------------------------------------
# R1


def test_r1_of_a_quadratic_discriminator_is_its_known_gradient_norm():
    x_in = keras.Input((2, 2, 1))
    d = keras.Model(x_in, ops.sum(3.0 * x_in**2, axis=(1, 2, 3))[:, None])  # grad = 6 x
    real = _rng(25).normal(size=(5, 2, 2, 1)).astype("float32")
    expected = np.mean(np.sum((6 * real.reshape(5, -1)) ** 2, axis=1))
    np.testing.assert_allclose(float(_np(discriminators.r1_penalty(d, real))), expected, rtol=1e-5)


def test_r1_of_a_network_matches_finite_differences():
    keras.utils.set_random_seed(0)
    d = discriminators.build_discriminator((8, 8, 1), channels=(4, 4), mbstd_group=0)  # each image scored alone
    real = _images(3, seed=26).astype("float64")
    eps = 1e-3
    steps = np.eye(64).reshape(64, 8, 8, 1) * eps  # one pixel moved at a time
    plus = (real[:, None] + steps[None]).reshape(-1, 8, 8, 1).astype("float32")
    minus = (real[:, None] - steps[None]).reshape(-1, 8, 8, 1).astype("float32")
    grads = (_np(d(plus)) - _np(d(minus))).reshape(3, 64) / (2 * eps)  # central differences
    expected = np.mean(np.sum(grads**2, axis=1))
    np.testing.assert_allclose(float(_np(discriminators.r1_penalty(d, real.astype("float32")))), expected, rtol=0.02)


# ---------------------------------------------------------------------------
# Training, EMA, generate, saving (one trained model shared: tracing a step costs more than running it)


@pytest.fixture(scope="module")
def trained():
    model = _tiny_model(sagan=True, r1_interval=3, ema_decay=0.9)  # the equalised D: the R1 tests below
    model.compile()
    nets = (("d", model.discriminator), ("g", model.synthesis), ("ema", model.synthesis_ema))
    before = {name: [_np(v).copy() for v in net.weights] for name, net in nets}
    model.fit(_images(7 * 8), batch_size=8, epochs=1, verbose=0)  # 7 steps: R1 at steps 0, 3, 6
    after = {name: [_np(v).copy() for v in net.weights] for name, net in nets}
    return {"model": model, "before": before, "after": after, "r1_count": float(_np(model.trackers["r1"].count)),
            "iterations": (int(_np(model.d_optimizer.iterations)), int(_np(model.g_optimizer.iterations))),
            "w_avg": (_np(model.mapping.w_avg).copy(), _np(model.mapping_ema.w_avg).copy())}


def test_training_updates_both_nets_w_avg_and_the_ema_and_applies_r1_lazily(trained):
    assert trained["iterations"] == (7, 7)
    assert trained["r1_count"] == pytest.approx(3.0)
    for name in ("d", "g", "ema"):
        assert any(np.abs(a - b).max() > 0 for a, b in zip(trained["after"][name], trained["before"][name])), name
    w_avg, w_avg_ema = trained["w_avg"]
    assert np.abs(w_avg).max() > 0  # moved from its zero start
    np.testing.assert_allclose(w_avg_ema, w_avg)  # copied into the EMA generator
    # The EMA lags: it is not the trained weights.
    assert any(np.abs(e - v).max() > 1e-6 for e, v in zip(trained["after"]["ema"], trained["after"]["g"]))
    # The spectral layers' power-iteration vectors moved during training.
    u = [i for i, v in enumerate(trained["model"].discriminator.weights) if v.name == "u"]
    assert u and any(np.abs(trained["after"]["d"][i] - trained["before"]["d"][i]).max() > 0 for i in u)


def test_ema_update_is_the_exact_average(trained):
    model = trained["model"]
    t = int(_np(model.g_optimizer.iterations))
    decay = min(0.9, (1 + t) / (10 + t))
    start = [_np(e).copy() for e in model.synthesis_ema.weights]
    model.update_ema()
    for e, e0, v in zip(model.synthesis_ema.weights, start, model.synthesis.weights):
        expected = decay * e0 + (1 - decay) * _np(v) if v.trainable else _np(v)
        np.testing.assert_allclose(_np(e), expected, rtol=1e-5, atol=1e-6)


def test_r1_is_computed_on_every_interval_th_step_only():
    model = _tiny_model(r1_gamma=2.0, r1_interval=2)
    model.compile(d_optimizer=keras.optimizers.SGD(0.0), g_optimizer=keras.optimizers.SGD(0.0))
    real = ops.convert_to_tensor(_images(8))
    expected = float(_np(discriminators.r1_penalty(model.discriminator, real)))
    seen = []
    for _ in range(3):  # steps 0, 1, 2: R1 at 0 and 2 (a zero learning rate keeps D fixed)
        _, r1, did, _, _ = model.discriminator_step(real)
        seen.append((bool(_np(did)), float(_np(r1))))
    assert [d for d, _ in seen] == [True, False, True]
    assert seen[0][1] == pytest.approx(expected, rel=1e-4) and seen[2][1] == pytest.approx(expected, rel=1e-4)
    assert seen[1][1] == 0.0


def test_generate_is_seeded_in_range_and_truncation_moves_towards_the_average(trained):
    model = trained["model"]
    a = model.generate(5, seed=3, batch_size=2)
    b = model.generate(5, seed=3)
    assert isinstance(a, np.ndarray) and a.shape == (5, 8, 8, 1) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)  # the same seed, whatever the batch size
    assert np.abs(model.generate(5, seed=4) - a).max() > 1e-4
    spread = lambda psi: model.generate(64, seed=5, truncation_psi=psi).std(axis=0).mean()  # noqa: E731
    assert spread(0.0) < 0.5 * spread(1.0)  # psi = 0: every image from w_avg, only the noise differs


def test_stylegan_round_trips_through_keras_files(trained, tmp_path):
    model = trained["model"]
    path = tmp_path / "stylegan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, stylegan.StyleGAN)
    np.testing.assert_allclose(loaded.generate(4, seed=1), model.generate(4, seed=1), atol=1e-5)
    np.testing.assert_allclose(_np(loaded.mapping_ema.w_avg), _np(model.mapping_ema.w_avg))
    np.testing.assert_allclose(loaded.generate(4, seed=1, ema=False), model.generate(4, seed=1, ema=False), atol=1e-5)


def test_wall_clock_budget_stops_fit(trained):
    model = trained["model"]
    start = int(_np(model.g_optimizer.iterations))
    budget = training.WallClockBudget(1e-6)
    model.fit(_images(64), batch_size=8, epochs=3, verbose=0, callbacks=[budget])
    assert budget.steps == 1 and int(_np(model.g_optimizer.iterations)) == start + 1


def test_blocks_round_trip(tmp_path):
    d = discriminators.build_discriminator((8, 8, 1), channels=(8, 8), attention_resolution=8, spectral_norm=True)
    x = _images(4)
    d(x, training=True)
    d.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    np.testing.assert_allclose(_np(loaded(x)), _np(d(x)), rtol=1e-5, atol=1e-6)


def test_path_length_is_zero_for_a_generator_that_ignores_its_latent(trained):
    assert np.all(stylegan.path_length(trained["model"], 6, space="z", seed=0) > 0)
    model = _untrained()
    for layer in model.synthesis_ema.convs + model.synthesis_ema.to_rgbs:
        layer.conv.affine.kernel.assign(ops.zeros(layer.conv.affine.kernel.shape))  # styles no longer depend on w
    for space in ("w", "z"):
        lengths = stylegan.path_length(model, 6, space=space, seed=0)
        assert lengths.shape == (6,) and np.allclose(lengths, 0.0, atol=1e-6)


def test_slerp_keeps_the_ends_and_the_norm_of_equal_norm_vectors():
    a, b = _rng(27).normal(size=(2, 4, 6))
    b = b / np.linalg.norm(b, axis=1, keepdims=True) * np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(stylegan.slerp(a, b, np.zeros((4, 1))), a, rtol=1e-5)
    np.testing.assert_allclose(stylegan.slerp(a, b, np.ones((4, 1))), b, rtol=1e-4, atol=1e-5)
    mid = stylegan.slerp(a, b, np.full((4, 1), 0.5))
    np.testing.assert_allclose(np.linalg.norm(mid, axis=1), np.linalg.norm(a, axis=1), rtol=1e-4)


def test_equalized_dense_runs_he_initialised_weights_at_the_chosen_learning_rate():
    layer = style_layers.EqualizedDense(256, lr_multiplier=0.01)
    x = _rng(28).normal(size=(512, 400)).astype("float32")
    y = _np(layer(x))
    np.testing.assert_allclose(y.std(), 1.0, atol=0.05)  # N(0, 1/lr^2) stored, lr/sqrt(fan_in) at run time
    np.testing.assert_allclose(_np(layer.kernel).std(), 100.0, rtol=0.05)


@pytest.mark.parametrize("call, match", [
    (lambda: style_layers.ModulatedConv2D(4, kernel_size=2), "odd"),
    (lambda: style_layers.EqualizedConv2D(0), "filters"),
    (lambda: stylegan.MappingNetwork(w_avg_beta=1.0), "w_avg_beta"),
    (lambda: stylegan.SynthesisNetwork(channels=()), "channels"),
    (lambda: stylegan.SynthesisNetwork(channels=8), "channels"),
    (lambda: discriminators.build_discriminator((12, 12, 1)), "power of two"),
    (lambda: discriminators.build_discriminator((16, 16, 1), channels=(8, 8)), "one number per resolution"),
    (lambda: discriminators.build_discriminator((16, 16, 1), channels=(8, 8, 8), attention_resolution=4),
     "attention_resolution"),
    (lambda: style_layers.EqualizedDense(4, activation="relu"), "activation"),
    (lambda: stylegan.path_length(_untrained(), 4, space="x"), "space"),
    (lambda: _untrained().generate(0), "n must be"),
    (lambda: _untrained().generate(2, truncation_psi="a"), "truncation_psi"),
    (lambda: _tiny_model(style_mixing=1.5), "style_mixing"),
    (lambda: stylegan.StyleGAN(stylegan.MappingNetwork(w_dim=4), stylegan.SynthesisNetwork(w_dim=8),
                               discriminators.build_discriminator()), "w_dim|w of"),
    (lambda: stylegan.StyleGAN(stylegan.MappingNetwork(w_dim=8), stylegan.SynthesisNetwork((8, 8), w_dim=8),
                               discriminators.build_discriminator()), "discriminator takes"),
])
def test_bad_arguments_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
