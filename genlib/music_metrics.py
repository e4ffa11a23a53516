"""Measuring music: statistics of note lists, a plagiarism check, n-gram baselines, bits per token.

Chapter 14 (chapters/14_music.ipynb); note lists and tokens are ``genlib.music``'s.

* ``musical_statistics``: pitch-class and note-length histograms, in-key ratio, voice ranges
  and crossings, polyphony, parallel fifths and octaves, against a reference set.
* ``longest_shared_run``: the longest stretch a sample shares with any training chorale.
* ``NGramModel`` (the count baselines) and ``bits_per_token`` of a ``genlib.transformer.GPT``.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from genlib import _util
from genlib.music import (
    BOS,
    DURATION,
    PITCH,
    REST,
    START,
    VOCAB_SIZE,
    VOICE,
    VOICE_RANGES,
    VOICES,
    check_notes,
    notes_to_grid,
    notes_to_tokens,
    sounding_pitches,
    tokens_to_notes,
)

# ---------------------------------------------------------------------------
# Musical statistics

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
DURATION_BINS = (1, 2, 3, 4, 6, 8, 12, 16)  # note lengths in steps; a last bin holds every other length


def pitch_class_histogram(notes) -> np.ndarray:
    """(12,) share of sounding time spent on each pitch class (C, C#, ..., B); zeros for no notes."""
    notes = check_notes(notes)
    hist = np.bincount(notes[:, PITCH] % 12, weights=notes[:, DURATION], minlength=12).astype("float64")
    return hist / max(hist.sum(), 1e-12)


def key_and_in_key_ratio(notes) -> tuple[int, float]:
    """The major scale (its tonic's pitch class) that holds the largest share of the sounding
    time, and that share: the **in-key ratio**. A minor piece finds its relative major."""
    hist = pitch_class_histogram(notes)
    shares = [hist[(root + np.array(MAJOR_SCALE)) % 12].sum() for root in range(12)]
    root = int(np.argmax(shares))
    return root, float(shares[root])


def key_aligned_histogram(notes) -> np.ndarray:
    """The pitch-class histogram rotated so that the key found by ``key_and_in_key_ratio`` starts it (0 = tonic)."""
    return np.roll(pitch_class_histogram(notes), -key_and_in_key_ratio(notes)[0])


def voice_crossing_rate(notes) -> float:
    """Share of (step, neighbouring voice pair) where both sing and the lower voice is above the upper one."""
    p = sounding_pitches(notes)
    upper, lower = p[:, :-1], p[:, 1:]
    both = (upper >= 0) & (lower >= 0)
    return float(((lower > upper) & both).sum() / max(both.sum(), 1))


def polyphony(notes) -> float:
    """Mean number of voices sounding, over the steps where at least one sounds."""
    on = (sounding_pitches(notes) >= 0).sum(axis=1)
    return float(on[on > 0].mean()) if (on > 0).any() else 0.0


def duration_histogram(notes) -> np.ndarray:
    """Share of notes per length in ``DURATION_BINS`` (steps), plus a last entry for every other length."""
    d = check_notes(notes)[:, DURATION]
    index = np.array([DURATION_BINS.index(x) if x in DURATION_BINS else len(DURATION_BINS) for x in d], dtype=int)
    hist = np.bincount(index, minlength=len(DURATION_BINS) + 1).astype("float64")
    return hist / max(hist.sum(), 1e-12)


def parallel_perfect_intervals(notes) -> tuple[int, int]:
    """``(parallels, moves)``: consecutive fifths or octaves, and all chances for them.

    Between two consecutive chords (times where some voice starts a note), a pair of voices
    that both move, from a perfect fifth to a perfect fifth or from an octave (or unison) to
    an octave (modulo octaves), moves in *parallel perfect intervals*, which the rules of
    four-part writing forbid. ``moves`` counts the pairs of voices that both move.
    """
    notes = check_notes(notes)
    p = sounding_pitches(notes)
    onsets = np.unique(notes[:, START])
    parallels = moves = 0
    for a, b in zip(onsets[:-1], onsets[1:]):
        before, after = p[a], p[b]
        for i in range(len(VOICES)):
            for j in range(i + 1, len(VOICES)):
                if min(before[i], before[j], after[i], after[j]) < 0 or before[i] == after[i] or before[j] == after[j]:
                    continue
                moves += 1
                interval_before, interval_after = (before[i] - before[j]) % 12, (after[i] - after[j]) % 12
                parallels += interval_before == interval_after and interval_before in (0, 7)
    return int(parallels), int(moves)


def histogram_distance(p, q) -> float:
    """Total variation distance ``0.5 * sum |p - q|`` between two histograms (0: equal, 1: disjoint)."""
    return 0.5 * float(np.abs(np.asarray(p, dtype="float64") - np.asarray(q, dtype="float64")).sum())


def musical_statistics(pieces, reference=None) -> dict:
    """Statistics of a set of pieces (note lists), averaged over the pieces.

    Keys: ``in_key`` (in-key ratio), ``crossing`` (voice-crossing rate), ``polyphony``,
    ``parallels`` (parallel fifths and octaves per 100 moves of two voices),
    ``range_<voice>`` (mean highest minus lowest pitch, semitones), ``mean_duration`` (steps),
    and the histograms ``pitch_classes`` (key-aligned, (12,)) and ``durations``.
    With ``reference`` (pieces, or a dict this function returned) also ``pitch_class_distance``
    and ``duration_distance``: total variation distances to the reference's histograms.
    """
    pieces = [check_notes(p) for p in pieces]
    pieces = [p for p in pieces if len(p)]
    if not pieces:
        raise ValueError("no notes to measure: every piece is empty.")
    parallels = np.array([parallel_perfect_intervals(p) for p in pieces])
    stats = {
        "in_key": float(np.mean([key_and_in_key_ratio(p)[1] for p in pieces])),
        "crossing": float(np.mean([voice_crossing_rate(p) for p in pieces])),
        "polyphony": float(np.mean([polyphony(p) for p in pieces])),
        "parallels": 100.0 * parallels[:, 0].sum() / max(parallels[:, 1].sum(), 1),
        "mean_duration": float(np.mean(np.concatenate([p[:, DURATION] for p in pieces]))),
    }
    for v, name in enumerate(VOICES):
        spans = [np.ptp(p[p[:, VOICE] == v, PITCH]) for p in pieces if (p[:, VOICE] == v).any()]
        stats[f"range_{name}"] = float(np.mean(spans)) if spans else 0.0
    stats["pitch_classes"] = np.mean([key_aligned_histogram(p) for p in pieces], axis=0)
    stats["durations"] = np.mean([duration_histogram(p) for p in pieces], axis=0)
    if reference is not None:
        ref = reference if isinstance(reference, dict) else musical_statistics(reference)
        stats["pitch_class_distance"] = histogram_distance(stats["pitch_classes"], ref["pitch_classes"])
        stats["duration_distance"] = histogram_distance(stats["durations"], ref["durations"])
    return stats


def random_notes(n: int, length: int, note_steps: int = 4, seed: int = 0, ranges=VOICE_RANGES) -> list[np.ndarray]:
    """The baseline a model must beat: ``n`` pieces of ``length`` steps where every voice sings a
    new pitch, uniform over its range, every ``note_steps`` steps."""
    n, length, note_steps = (_util.positive_int(k, v) for k, v in (("n", n), ("length", length),
                                                                   ("note_steps", note_steps)))
    rng = np.random.default_rng(seed)
    starts = np.arange(0, length, note_steps)
    durations = np.minimum(note_steps, length - starts)
    pieces = []
    for _ in range(n):
        rows = [np.stack([np.full_like(starts, v), starts, durations, rng.integers(lo, hi + 1, len(starts))], 1)
                for v, (lo, hi) in enumerate(ranges)]
        pieces.append(check_notes(np.concatenate(rows)))
    return pieces


def longest_shared_run(pieces, references) -> np.ndarray:
    """For each piece, the longest stretch (in steps) that occurs note for note in some reference.

    Pieces and references are compared on their time grids (``notes_to_grid``): a step is the
    four voices' cells, so a shared run means the same pitches starting and held at the same
    steps in all four voices. A run of k + 1 steps is shared only if the two runs of k steps
    inside it are, so the search grows k one step at a time and keeps, on both sides, only
    the windows still matched; windows are compared by 64-bit polynomial hashes (a false
    match is vanishingly unlikely).
    """
    pieces = [_frame_ids(p) for p in pieces]
    # All references in one sequence, separated by an id no step has: no shared window spans two of them.
    reference = np.concatenate([x for r in references for x in (_frame_ids(r), [0])]).astype(np.int64)
    prefixes, ref_prefix = [_prefix_hashes(p) for p in pieces], _prefix_hashes(reference)
    alive = [np.ones(len(p), dtype=bool) for p in pieces]  # windows starting here may still be shared
    ref_alive = np.ones(len(reference), dtype=bool)
    longest = np.zeros(len(pieces), dtype=np.int64)
    for k in range(1, max((len(p) for p in pieces), default=0) + 1):
        starts = [np.flatnonzero(a[: max(len(a) - k + 1, 0)]) for a in alive]
        hashes = [_window_hashes(prefix, k, s) for prefix, s in zip(prefixes, starts)]
        ref_starts = np.flatnonzero(ref_alive[: max(len(reference) - k + 1, 0)])
        ref_hashes = _window_hashes(ref_prefix, k, ref_starts)
        ref_found = _member(ref_hashes, np.sort(np.concatenate(hashes)))
        known = np.sort(ref_hashes[ref_found])
        any_found = False
        for i, (a, s, h) in enumerate(zip(alive, starts, hashes)):
            found = _member(h, known)
            _next_alive(a, s[found])
            if found.any():
                longest[i], any_found = k, True
        if not any_found:
            break
        _next_alive(ref_alive, ref_starts[ref_found])
    return longest


def _member(values, table):
    # Which of `values` occur in `table` (sorted).
    if not len(table):
        return np.zeros(len(values), dtype=bool)
    return table[np.minimum(np.searchsorted(table, values), len(table) - 1)] == values


def _next_alive(alive, matched):
    # A window of k + 1 steps at s can match only if the k-step windows at s and s + 1 both did.
    alive[:] = False
    alive[matched] = True
    alive[:-1] &= alive[1:]


_HASH_BASE, _HASH_MASK = 1_000_003, (1 << 64) - 1


def _frame_ids(notes):
    # One positive int per step for the four cells of the time grid (cells lie in [REST, 127]).
    cells = notes_to_grid(notes) - REST  # 0..129
    ids = np.zeros(cells.shape[1], dtype=np.int64)
    for row in cells:
        ids = ids * 130 + row
    return ids + 1


def _prefix_hashes(seq):
    # H[i] = sum_{j < i} seq[j] B^(i-1-j) modulo 2^64, so a window's hash is H[i+k] - H[i] B^k.
    # Vectorised with B^(i-1) * cumsum(seq[j] B^-j): B is odd, so it has an inverse modulo 2^64.
    seq = np.asarray(seq, dtype=np.uint64)
    n = len(seq)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as the hash wants
        powers = np.multiply.accumulate(np.full(max(n, 1), _HASH_BASE, dtype=np.uint64))  # B^1 .. B^n
        inverse = np.multiply.accumulate(np.full(max(n, 1), pow(_HASH_BASE, -1, 1 << 64), dtype=np.uint64))
        inverse = np.concatenate([[np.uint64(1)], inverse[:-1]])  # B^0 .. B^-(n-1)
        out = np.zeros(n + 1, dtype=np.uint64)
        out[1:] = np.cumsum(seq * inverse[:n], dtype=np.uint64) * np.concatenate([[np.uint64(1)], powers[:n - 1]])
    return out


def _window_hashes(prefix, k, starts):
    # Hashes of the k-step windows that begin at `starts`.
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as the hash wants
        return prefix[starts + k] - prefix[starts] * np.uint64(pow(_HASH_BASE, k, 1 << 64))


# ---------------------------------------------------------------------------
# Likelihood: count baselines and the transformer, in bits per token


class NGramModel:
    """An n-gram model of token sequences, each level smoothed towards the one below.

    ``p_k(w | h) = (c(h, w) + beta * p_{k-1}(w | h')) / (c(h) + beta)``: ``h`` the last k tokens,
    ``h'`` the last k - 1, ``c`` training counts, ``c(h)`` the count of ``h`` followed by
    anything, ``beta`` (``concentration``) how many counts the lower level's prediction is
    worth; ``p_{-1}`` is uniform over the vocabulary. Order 1 is the unigram model. Contexts
    reaching before a sequence's start are padded with ``BOS``. Contexts are stored as 64-bit
    hashes, so any order fits (a collision is vanishingly unlikely).

    Args:
        order: n, the number of tokens in an n-gram (the context is n - 1 tokens).
        vocab_size: V.
        concentration: beta > 0.
    """

    def __init__(self, order: int, vocab_size: int = VOCAB_SIZE, concentration: float = 1.0):
        self.order = _util.positive_int("order", order)
        self.vocab_size = _util.positive_int("vocab_size", vocab_size, 2)
        self.concentration = _util.number("concentration", concentration, low=0, low_open=True)
        self.counts = None

    def _keys(self, sequences):
        # For every target token and k = 0..order-1: (hash of its context of k tokens, hash of context and token).
        contexts, pairs = [[] for _ in range(self.order)], [[] for _ in range(self.order)]
        base = np.uint64(_HASH_BASE)
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            if seq.ndim != 1 or len(seq) < 1 or seq.min() < 0 or seq.max() >= self.vocab_size:
                raise ValueError(f"sequences must be 1-D ids in [0, {self.vocab_size - 1}].")
            padded = np.concatenate([np.full(self.order - 1, BOS, dtype=np.int64), seq]).astype(np.uint64)
            targets = padded[self.order:]  # predict seq[1:]
            context = np.zeros(len(targets), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for k in range(self.order):
                    if k:
                        context = context * base + padded[self.order - k: len(padded) - k] + np.uint64(1)
                    contexts[k].append(context)
                    pairs[k].append(context * base + targets + np.uint64(1))
        return [(np.concatenate(c), np.concatenate(p)) for c, p in zip(contexts, pairs)]

    def fit(self, sequences) -> NGramModel:
        """Count the n-grams of every length up to ``order`` in ``sequences`` (id arrays, each starting with BOS)."""
        self.counts = [(*np.unique(pairs, return_counts=True), *np.unique(contexts, return_counts=True))
                       for contexts, pairs in self._keys(sequences)]
        return self

    @staticmethod
    def _lookup(table, values, keys):
        i = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where(table[i] == keys, values[i], 0)

    def log2_probs(self, sequences, order: int | None = None, concentration: float | None = None) -> np.ndarray:
        """log2 p of every token after the first of every sequence, concatenated.

        ``order`` (at most the fitted one) and ``concentration`` override the model's: the
        counts of an order-n model hold those of every lower order, so one fit serves them all.
        """
        if self.counts is None:
            raise ValueError("fit the model first.")
        order = self.order if order is None else _util.positive_int("order", order)
        if order > self.order:
            raise ValueError(f"order {order} is higher than the fitted order {self.order}.")
        beta = self.concentration if concentration is None else \
            _util.number("concentration", concentration, low=0, low_open=True)
        p = None
        for (contexts, pairs), (pair_keys, pair_counts, context_keys, context_counts) in zip(
                self._keys(sequences)[:order], self.counts):
            if p is None:
                p = np.full(len(pairs), 1.0 / self.vocab_size)
            c_hw = self._lookup(pair_keys, pair_counts, pairs)
            c_h = self._lookup(context_keys, context_counts, contexts)
            p = (c_hw + beta * p) / (c_h + beta)
        return np.log2(p)

    def bits_per_token(self, sequences, order: int | None = None, concentration: float | None = None) -> float:
        """Mean ``-log2 p`` over every token after the first; ``order``, ``concentration``: see ``log2_probs``."""
        return float(-self.log2_probs(sequences, order, concentration).mean())


def bits_per_token(model, sequences, stride: int | None = None, batch_size: int = 64) -> float:
    """Mean ``-log2 p`` of every token after the first, under a ``genlib.transformer.GPT``.

    A sequence longer than the model's context L is read in windows of L tokens that start
    every ``stride`` tokens (default L // 2): the first window scores all its tokens, each
    later one only its last ``stride``, so every token is scored once and with at least
    L - stride tokens of context (or all there are).
    """
    L = model.max_length
    stride = L // 2 if stride is None else _util.positive_int("stride", stride)
    if stride > L:
        raise ValueError(f"stride={stride} is longer than the context {L}.")
    windows, targets, masks = [], [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        start, scored_to = 0, 0  # targets seq[1:scored_to] are scored
        while scored_to < len(seq) - 1 or start == 0:
            x = seq[start: start + L]
            y = seq[start + 1: start + L + 1]
            mask = np.arange(start + 1, start + 1 + len(y)) > scored_to
            windows.append(np.pad(x, (0, L - len(x))))
            targets.append(np.pad(y, (0, L - len(y))))
            masks.append(np.pad(mask, (0, L - len(y))))
            scored_to = start + len(y)
            if start + L + 1 >= len(seq):
                break
            start += stride
    windows, targets, masks = np.array(windows, "int32"), np.array(targets), np.array(masks)
    total = 0.0
    for i in range(0, len(windows), batch_size):
        logits = ops.convert_to_numpy(model(windows[i: i + batch_size], training=False)).astype("float64")
        logits -= logits.max(-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_p, targets[i: i + batch_size, :, None], -1)[..., 0]
        total -= (picked * masks[i: i + batch_size]).sum()
    return float(total / masks.sum() / math.log(2.0))


def token_stream(pieces) -> np.ndarray:
    """All pieces' token sequences (``BOS ... EOS``) one after another: the transformer's training text."""
    return np.concatenate([notes_to_tokens(p) for p in pieces]).astype("int32")


def decode_samples(token_rows) -> tuple[list[np.ndarray], int]:
    """Note lists of sampled token rows (read up to the first ``EOS``), and the tokens that broke the grammar."""
    pieces, errors = [], 0
    for row in np.asarray(token_rows):
        notes, e = tokens_to_notes(row, strict=False)
        pieces.append(notes)
        errors += e
    return pieces, errors
