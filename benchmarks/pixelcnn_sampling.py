"""Naive vs fast PixelCNN sampling at 16×16: seconds per image of each, their ratio, and identical outputs.

The naive sampler runs the whole network once per pixel (H·W full passes); the fast one
keeps each layer's inputs of the rows above and recomputes only the current row. Both are
timed side by side in one run, on the same model, batch and Gumbel noise, after a warm-up
call that traces their compiled steps.

    GENLIB_PROFILE=smoke python benchmarks/pixelcnn_sampling.py [--batch 32] [--filters 64] [--blocks 5]
"""

from __future__ import annotations

import argparse

import numpy as np

import genlib  # noqa: F401  (quiet TensorFlow start-up)
from genlib import training
from genlib.autoregressive import PixelCNN, gumbel_noise, sample_fast, sample_naive


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images drawn at once")
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each sampler (best is kept)")
    args = parser.parse_args(argv)

    training.seed_everything(0)
    model = PixelCNN((16, 16, 1), levels=args.levels, filters=args.filters, num_blocks=args.blocks)
    model.build()
    noise = gumbel_noise((args.batch, 16, 16, args.levels), seed=0)
    samplers = {"naive": sample_naive, "fast": sample_fast}
    for fn in samplers.values():  # warm-up: trace the compiled steps outside the timing
        fn(model, args.batch, noise=noise)
    best, images = {}, {}
    for _ in range(args.repeats):  # alternate the two, so a slow minute on a shared machine hits both
        for name, fn in samplers.items():
            with training.Timer() as t:
                images[name] = fn(model, args.batch, noise=noise)
            best[name] = min(best.get(name, np.inf), t.seconds)
    identical = bool(np.array_equal(images["naive"], images["fast"]))
    ratio = best["naive"] / best["fast"]
    print(f"PixelCNN {model.count_params()} params, {args.blocks} blocks, {args.filters} filters, "
          f"batch {args.batch}, 16x16x{args.levels}")
    for name in samplers:
        print(f"  {name:5s}: {best[name]:.2f} s per batch, {best[name] / args.batch * 1000:.1f} ms per image")
    print(f"  speed-up naive/fast: {ratio:.1f}x; identical outputs: {identical}")
    assert identical, "the two samplers disagree on the same noise"
    return ratio


if __name__ == "__main__":
    main()
