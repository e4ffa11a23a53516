"""Training-step cost: chapter 9's StyleGAN against chapter 3's DCGAN, and lazy against eager R1.

Chapter 9 trains both GANs for the same wall-clock time, so what a step costs decides how many
steps each gets. This prints the steady-state milliseconds per step (batch 32, 16x16 images,
the chapter's ``cpu`` networks, random data: a step's cost does not depend on the weights) for

* the DCGAN (``gan.GAN``, filters 32),
* the StyleGAN with lazy R1 (every 4th step), as the chapter trains it,
* the StyleGAN with R1 on every step,

measured side by side in one run (alternating, best of ``--repeats``), and the ratios.

Run: ``python benchmarks/stylegan_step.py [--steps 40] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import genlib  # noqa: F401  (picks the backend and quiets TensorFlow before keras loads)
from genlib import gan, stylegan, training


def stylegan_model(r1_interval):
    training.seed_everything(0)
    mapping = stylegan.MappingNetwork(64, 64, depth=2)
    synthesis = stylegan.SynthesisNetwork((32, 32, 16), 64, seed=0)
    discriminator = stylegan.build_discriminator((16, 16, 1), (16, 32, 32), mbstd_group=32, attention_resolution=8)
    model = stylegan.StyleGAN(mapping, synthesis, discriminator, r1_gamma=0.01, r1_interval=r1_interval, seed=0)
    model.compile()
    return model


def dcgan_model():
    training.seed_everything(0)
    model = gan.GAN(gan.build_generator(64, (16, 16, 1), filters=32), gan.build_discriminator((16, 16, 1), filters=32),
                    label_smoothing=0.1, seed=0)
    model.compile(keras.optimizers.Adam(5e-4, beta_1=0.5), keras.optimizers.Adam(5e-4, beta_1=0.5))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per model (best is kept)")
    args = parser.parse_args(argv)

    x = np.random.default_rng(0).uniform(-1, 1, size=(32 * args.steps, 16, 16, 1)).astype("float32")
    models = {"DCGAN": dcgan_model(), "StyleGAN, lazy R1 (every 4th step)": stylegan_model(4),
              "StyleGAN, R1 every step": stylegan_model(1)}
    with genlib.quiet_stderr():
        for model in models.values():
            model.fit(x[:32 * 8], batch_size=32, epochs=1, verbose=0)  # trace outside the timing
        ms = {}
        for _ in range(args.repeats):  # alternate, so a burst of load hits all alike
            for name, model in models.items():
                start = time.perf_counter()
                model.fit(x, batch_size=32, epochs=1, verbose=0)
                ms[name] = min(ms.get(name, np.inf), 1000 * (time.perf_counter() - start) / args.steps)
    for name, value in ms.items():
        print(f"{name:>36}: {value:6.1f} ms/step")
    lazy, eager = ms["StyleGAN, lazy R1 (every 4th step)"], ms["StyleGAN, R1 every step"]
    print(f"StyleGAN step / DCGAN step: {lazy / ms['DCGAN']:.2f}x; R1 every step / lazy R1: {eager / lazy:.2f}x")
    return ms


if __name__ == "__main__":
    main()
