"""Latent vs pixel flow matching, and flow matching vs DDIM, at the same U-Net, data and training budget.

One run trains (or loads from the checkpoint cache) three models on Fashion-MNIST at the
profile's image size: chapter 7's DDPM, pixel-space flow matching, and flow matching in the
latent space of a ``LatentAutoencoder``. It then prints

* the sampling time per image of the latent and the pixel flow-matching models at the same
  number of Euler steps (batches of ``--n``, compiled beforehand, best of ``--repeats`` timings
  taken alternately) and their ratio, pixel / latent;
* the FID of flow matching (Euler) and of DDPM sampled with DDIM, both at ``--steps`` network
  calls per image, from the same starting noise.

    GENLIB_PROFILE=cpu python benchmarks/latent_sampling.py [--steps 8] [--n 500] [--epochs 2]
"""

from __future__ import annotations

import argparse
import math

import keras

import genlib  # noqa: F401  (quiet TensorFlow start-up)
from genlib import data, latent, metrics, profiles, training
from genlib import diffusion as dm
from genlib import flow_matching as fm


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="sampling steps (network calls) of every sampler")
    parser.add_argument("--n", type=int, default=profiles.pick(smoke=200, cpu=500, full=2000),
                        help="samples per model (FID) and batch size of the timings")
    parser.add_argument("--epochs", type=int, default=profiles.pick(smoke=4, cpu=2, full=30),
                        help="training epochs of each model")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each sampler (best is kept)")
    args = parser.parse_args(argv)

    training.seed_everything(0)
    size = profiles.pick(smoke=16, cpu=16, full=32)
    x = data.fashion_mnist(size=size, value_range=(-1, 1), n_train=profiles.pick(smoke=1920, cpu=12000, full=60000),
                           n_test=10).x_train
    net = dict(widths=profiles.pick(smoke=(16, 32), cpu=(32, 64), full=(64, 128, 256)),
               blocks_per_level=profiles.pick(smoke=1, cpu=1, full=2), attention=True,
               ema_decay=profiles.pick(smoke=0.99, cpu=0.995, full=0.999), seed=0)
    batch_size, lr = profiles.pick(smoke=64, cpu=64, full=128), profiles.pick(smoke=3e-3, cpu=2e-3, full=1e-3)
    tag = f"{size}-{'x'.join(map(str, net['widths']))}-e{args.epochs}"

    def fit(model, inputs, name):
        model.compile(optimizer=keras.optimizers.Adam(lr))
        training.fit_or_load(model, f"bench-{name}-{tag}", inputs, epochs=args.epochs, batch_size=batch_size,
                             verbose=0)

    ddpm = dm.DiffusionModel(image_shape=x.shape[1:], schedule="cosine", timesteps=1000, **net)
    ddpm.build()
    fit(ddpm, x, "ddpm")
    flow = fm.FlowMatchingModel(image_shape=x.shape[1:], **net)
    flow.build()
    fit(flow, x, "fm")
    ae = latent.LatentAutoencoder(x.shape[1:], latent_channels=4,
                                  filters=profiles.pick(smoke=(16, 32), cpu=(32, 64), full=(64, 128)), seed=0)
    ae.build()
    fit(ae, x, "ae")
    ae.fit_scale_factor(x)
    prior = fm.FlowMatchingModel(image_shape=ae.latent_shape, clip=None, **net)
    prior.build()
    fit(prior, ae.to_latent(x), "latent-fm")
    latent_model = latent.LatentGenerator(ae, prior)

    noise = flow.noise(args.n, seed=3)
    samplers = {"pixel": lambda: flow.generate(noise=noise, steps=args.steps, compile=True, progress=False),
                "latent": lambda: latent_model.generate(args.n, seed=3, steps=args.steps, compile=True,
                                                        progress=False)}
    for run in samplers.values():  # warm-up: trace the compiled network calls outside the timing
        run()
    best, images = {}, {}
    for _ in range(args.repeats):  # alternate, so a slow minute on a shared machine hits both
        for name, run in samplers.items():
            with training.Timer() as t:
                images[name] = run()
            best[name] = min(best.get(name, math.inf), t.seconds / args.n)
    ratio = best["pixel"] / best["latent"]
    images["ddim"] = ddpm.generate(x_T=noise, steps=args.steps, compile=True, progress=False)
    fid = {k: metrics.evaluate_samples(images[k], value_range=(-1, 1))["fid"] for k in ("pixel", "ddim", "latent")}

    print(f"{size}x{size} Fashion-MNIST, U-Net widths {net['widths']}, {args.epochs} epochs each "
          f"({args.epochs * math.ceil(len(x) / batch_size)} steps), {args.n} samples, {args.steps} steps")
    print(f"  codes {ae.latent_shape} for images {x.shape[1:]} (f = {ae.downsampling})")
    print(f"  sampling: pixel {1000 * best['pixel']:.2f} ms/image, latent {1000 * best['latent']:.2f} ms/image "
          f"(incl. decoding); ratio pixel/latent {ratio:.1f}x")
    print(f"  FID at {args.steps} steps: flow matching (Euler) {fid['pixel']:.2f}, DDPM with DDIM {fid['ddim']:.2f}, "
          f"latent flow matching {fid['latent']:.2f}")
    return {"ratio": ratio, "fid": fid, "ms_per_image": {k: 1000 * v for k, v in best.items()}}


if __name__ == "__main__":
    main()
