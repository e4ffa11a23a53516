"""Generation with and without the key/value cache: 256 new tokens, same seed, same model.

Prints seconds for each sampler and their ratio (uncached / cached), measured side by side
in one run, and asserts that both produced identical tokens. The model is the chapter's
character GPT (2 blocks, width 128, 4 heads, context 256) with random weights: the cost of
a step does not depend on what the weights are.

Run: ``python benchmarks/transformer_cache.py [--tokens 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import genlib  # noqa: F401  (picks the backend and quiets TensorFlow before keras loads)
from genlib import training, transformer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per sampler (best is kept)")
    parser.add_argument("--context", type=int, default=256, help="the model's max_length")
    args = parser.parse_args(argv)

    training.seed_everything(0)
    model = transformer.GPT(vocab_size=65, max_length=args.context, width=128, depth=2, num_heads=4)
    model.build((None, args.context))
    prompt = np.random.default_rng(0).integers(0, 65, size=(1, 16)).astype("int32")
    samplers = {"uncached": transformer.Sampler(model, use_cache=False),
                "cached": transformer.Sampler(model, use_cache=True)}
    outputs, seconds = {}, {}
    for sampler in samplers.values():
        sampler(prompt, 8, seed=1)  # compile outside the timing
    # Alternate the two samplers so a burst of load on the machine hits both alike.
    for _ in range(args.repeats):
        for name, sampler in samplers.items():
            start = time.perf_counter()
            outputs[name] = sampler(prompt, args.tokens, temperature=1.0, top_k=None, seed=1)
            seconds[name] = min(seconds.get(name, np.inf), time.perf_counter() - start)
    for name in samplers:
        print(f"{name:>9}: {seconds[name]:.3f} s for {args.tokens} tokens "
              f"({args.tokens / seconds[name]:.0f} tokens/s)")
    ratio = seconds["uncached"] / seconds["cached"]
    print(f"speed-up from the cache: {ratio:.2f}x")
    assert np.array_equal(outputs["cached"], outputs["uncached"]), "cached and uncached samplers disagree"
    print("identical tokens: yes")
    return ratio


if __name__ == "__main__":
    main()
