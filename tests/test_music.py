"""Tests of genlib.music, midi, music_metrics and musegan: exact round trips of the encodings on real
chorales, MIDI, audio, statistics, the corpus reader, n-gram and transformer likelihoods, the plagiarism check, MuseGAN.

Backend-neutral: run under TensorFlow, JAX and PyTorch. The corpus tests need ``music21`` (it holds the
chorales) and are skipped without it.
"""

import io
import math
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from genlib import _util, midi, musegan, music, music_metrics, plot, transformer

# A hand-written cadence in C major, I - V7 - I, no note repeated in a voice (voice, start, duration, pitch): S-A-T-B.
CADENCE = np.array([
    [0, 0, 4, 72], [1, 0, 4, 67], [2, 0, 4, 64], [3, 0, 4, 48],
    [0, 4, 4, 71], [1, 4, 4, 65], [2, 4, 4, 62], [3, 4, 4, 55],
    [0, 8, 8, 72], [1, 8, 8, 64], [2, 8, 8, 60], [3, 8, 8, 48],
])


@pytest.fixture(scope="module")
def chorales():
    pytest.importorskip("music21")
    return music.parse_chorales(music.corpus_paths()[:12], progress=False)


# -- note lists and the two encodings -------------------------------------------------------------


def test_check_notes_sorts_and_refuses_bad_notes():
    shuffled = CADENCE[::-1]
    np.testing.assert_array_equal(music.check_notes(shuffled), CADENCE)
    with pytest.raises(ValueError, match="overlap"):
        music.check_notes([[0, 0, 4, 60], [0, 2, 4, 62]])
    with pytest.raises(ValueError, match="voice"):
        music.check_notes([[4, 0, 4, 60]])
    with pytest.raises(ValueError, match="duration"):
        music.check_notes([[0, 0, 0, 60]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        music.check_notes(np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match="int array"):
        music.check_notes(np.zeros((3, 4)))


def test_round_trips_are_exact_on_real_chorales(chorales):
    assert len(chorales) >= 8
    for notes in chorales.notes:
        np.testing.assert_array_equal(music.grid_to_notes(music.notes_to_grid(notes)), notes)
        back, errors = music.tokens_to_notes(music.notes_to_tokens(notes))
        assert errors == 0
        np.testing.assert_array_equal(back, notes)


def test_grid_cells_mean_what_the_docstring_says():
    grid = music.notes_to_grid([[0, 1, 3, 60], [0, 4, 1, 60], [3, 0, 2, 48]], length=6)
    np.testing.assert_array_equal(grid[0], [music.REST, 60, music.HOLD, music.HOLD, 60, music.REST])
    np.testing.assert_array_equal(grid[3], [48, music.HOLD, music.REST, music.REST, music.REST, music.REST])
    assert (grid[1:3] == music.REST).all()
    with pytest.raises(ValueError, match="shorter"):
        music.notes_to_grid(CADENCE, length=10)


def test_tokens_of_a_small_example():
    notes = [[0, 0, 4, 72], [3, 0, 8, 48], [0, 4, 4, 71], [0, 28, 4, 72]]
    tokens = music.notes_to_tokens(notes)
    names = [music.token_name(t) for t in tokens]
    assert names == ["<s>", "S:C5", "d4", "B:C3", "d8", "+4", "S:B4", "d4", "+16", "+8", "S:C5", "d4", "</s>"]
    assert tokens.max() < music.VOCAB_SIZE
    # every token id is described and named, and the note tokens cover exactly the voice ranges
    kinds = [music.describe_token(t)[0] for t in range(music.VOCAB_SIZE)]
    assert kinds.count("note") == sum(hi - lo + 1 for lo, hi in music.VOICE_RANGES)
    with pytest.raises(ValueError, match="vocabulary"):
        music.describe_token(music.VOCAB_SIZE)
    with pytest.raises(ValueError, match="range"):
        music.note_token(3, 80)


def test_broken_token_sequences_raise_when_strict_and_are_repaired_otherwise():
    d4, note = music.duration_token(4), music.note_token
    dangling = [music.BOS, note(0, 72), note(1, 67), d4, music.EOS]  # a note without its duration
    with pytest.raises(ValueError, match="duration"):
        music.tokens_to_notes(dangling)
    notes, errors = music.tokens_to_notes(dangling, strict=False)
    assert errors == 1
    np.testing.assert_array_equal(notes, [[1, 0, 4, 67]])
    # a voice that starts a note while still singing: the earlier note is cut short
    overlap = [music.BOS, note(0, 72), music.duration_token(8), music.shift_token(2), note(0, 74), d4]
    notes, errors = music.tokens_to_notes(overlap, strict=False)
    assert errors == 1
    np.testing.assert_array_equal(notes, [[0, 0, 2, 72], [0, 2, 4, 74]])
    # reading stops at EOS
    notes, _ = music.tokens_to_notes([music.BOS, note(2, 60), d4, music.EOS, note(2, 62), d4])
    assert len(notes) == 1


def test_crop_cuts_notes_at_both_ends():
    np.testing.assert_array_equal(music.crop(CADENCE, 2, 10),
                                  [[0, 0, 2, 72], [1, 0, 2, 67], [2, 0, 2, 64], [3, 0, 2, 48],
                                   [0, 2, 4, 71], [1, 2, 4, 65], [2, 2, 4, 62], [3, 2, 4, 55],
                                   [0, 6, 2, 72], [1, 6, 2, 64], [2, 6, 2, 60], [3, 6, 2, 48]])
    np.testing.assert_array_equal(music.crop(CADENCE), CADENCE)
    assert len(music.crop(CADENCE, 16, 20)) == 0


def test_transpositions_stay_in_range_and_augment_includes_the_original(chorales):
    notes = chorales.notes[0]
    shifts = music.transpositions_in_range(notes)
    assert 0 in shifts and len(shifts) >= 2
    for s in shifts:
        moved = music.transpose(notes, s)
        for v, (lo, hi) in enumerate(music.VOICE_RANGES):
            p = moved[moved[:, music.VOICE] == v, music.PITCH]
            assert lo <= p.min() and p.max() <= hi
    below, above = min(shifts) - 1, max(shifts) + 1
    for s in (below, above):
        if abs(s) <= 6:  # just outside the allowed shifts some voice leaves its range
            with pytest.raises(ValueError):
                music.tokens_to_notes(music.notes_to_tokens(music.transpose(notes, s)))
    augmented = music.augment(chorales.notes[:2])
    assert len(augmented) == sum(len(music.transpositions_in_range(n)) for n in chorales.notes[:2])
    assert any(np.array_equal(a, chorales.notes[0]) for a in augmented)


def test_piano_roll_round_trip_merges_repeated_notes():
    roll = music.notes_to_roll(CADENCE, bars=1)
    assert roll.shape == (1, 16, 48, 4) and roll.sum() == 16 * 4
    np.testing.assert_array_equal(music.roll_to_notes(roll), CADENCE)
    repeated = [[0, 0, 2, 72], [0, 2, 2, 72], [3, 0, 4, 48]]
    np.testing.assert_array_equal(music.roll_to_notes(music.notes_to_roll(repeated, bars=1)),
                                  [[0, 0, 4, 72], [3, 0, 4, 48]])
    with pytest.raises(ValueError, match="range"):
        music.notes_to_roll([[0, 0, 4, 90]], bars=1)


# -- the corpus -------------------------------------------------------------------------------------


def test_reader_agrees_with_music21(chorales):
    music21 = pytest.importorskip("music21")
    for path in music.corpus_paths()[:4]:
        score = music21.converter.parse(str(path))
        if len(score.parts) != 4:
            continue
        expected = [(v, int(n.offset * 4), int(n.quarterLength * 4), n.pitch.midi)
                    for v, part in enumerate(score.parts) for n in part.flatten().stripTies().notes
                    if not n.duration.isGrace]
        np.testing.assert_array_equal(music.read_musicxml(path)["notes"], music.check_notes(expected))


def test_unreadable_and_unusable_scores_are_counted_and_skipped(tmp_path, chorales):
    good = music.corpus_paths()[1]
    (tmp_path / "corrupt.mxl").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (tmp_path / "garbage.xml").write_text("<score-partwise><part id='P1'><measure>")
    three = "<score-partwise>" + "<part id='P{}'><measure/></part>" * 3 + "</score-partwise>"
    (tmp_path / "three_parts.xml").write_text(three.format(1, 2, 3))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a zip without the container that names the score
        archive.writestr("score.xml", "<score-partwise/>")
    (tmp_path / "no_container.mxl").write_bytes(buffer.getvalue())
    paths = [good, *sorted(tmp_path.iterdir()), tmp_path / "missing.mxl"]
    result = music.parse_chorales(paths, progress=False)
    assert result.names == [good.stem] or not result.names  # the real chorale, if it has four voices
    skipped = sum(len(v) for v in result.skipped.values())
    assert skipped + len(result) == len(paths)
    assert set(result.skipped["unreadable file"]) >= {"corrupt", "garbage", "no_container"}
    assert result.skipped["not four parts"] == ["three_parts"]
    assert any(name.startswith("missing") for name in result.skipped["unreadable file"])


def test_read_musicxml_merges_ties_and_finds_the_pickup():
    xml = """<score-partwise>{}</score-partwise>"""
    part = """<part id="P{v}">
      <measure number="0"><attributes><divisions>2</divisions><time><beats>4</beats><beat-type>4</beat-type></time>
      </attributes><note><pitch><step>{s}</step><octave>{o}</octave></pitch><duration>2</duration></note></measure>
      <measure number="1"><note><pitch><step>{s}</step><alter>1</alter><octave>{o}</octave></pitch>
      <duration>6</duration><tie type="start"/></note>
      <note><pitch><step>{s}</step><alter>1</alter><octave>{o}</octave></pitch><duration>2</duration>
      <tie type="stop"/></note></measure></part>"""
    pitches = [("C", 5), ("G", 4), ("E", 4), ("C", 3)]
    data = xml.format("".join(part.format(v=v, s=s, o=o) for v, (s, o) in enumerate(pitches))).encode()
    piece = music.read_musicxml(data)
    assert piece["steps_per_bar"] == 16 and piece["first_downbeat"] == 4
    soprano = piece["notes"][piece["notes"][:, 0] == 0]
    np.testing.assert_array_equal(soprano, [[0, 0, 4, 72], [0, 4, 16, 73]])  # the tie made one whole note


def test_split_is_by_chorale(chorales):
    train, val = music.split(chorales, 0.25, seed=0)
    assert len(train) + len(val) == len(chorales) and len(val) == round(0.25 * len(chorales))
    assert not set(train.names) & set(val.names)
    assert music.split(chorales, 0.25, seed=0)[1].names == val.names


def test_load_chorales_caches_arrays(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    paths = music.corpus_paths()[:6]
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(music, "corpus_paths", lambda: paths)
    first = music.load_chorales(progress=False)
    assert not first.from_cache and first.parse_seconds > 0
    assert (tmp_path / "music" / f"bach_chorales_v{music.CACHE_VERSION}.npz").exists()
    again = music.load_chorales(progress=False)
    assert again.from_cache and again.names == first.names and again.skipped == first.skipped
    assert again.parse_seconds == pytest.approx(first.parse_seconds)
    for a, b in zip(again.notes, first.notes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.first_downbeat, first.first_downbeat)


# -- MIDI and audio ---------------------------------------------------------------------------------


def test_midi_round_trip_on_real_chorales(chorales):
    for notes in chorales.notes[:4]:
        data = midi.notes_to_midi(notes, bpm=90)
        back, bpm = midi.midi_to_notes(data)
        np.testing.assert_array_equal(back, notes)
        assert bpm == pytest.approx(90, rel=1e-4)


def test_midi_reimports_in_music21(tmp_path, chorales):
    music21 = pytest.importorskip("music21")
    # (music21 10.5 misplaces what follows a note held over four bars, so take a chorale without one)
    notes = next(n for n in chorales.notes if n[:, music.DURATION].max() <= 16)
    path = tmp_path / "chorale.mid"
    path.write_bytes(midi.notes_to_midi(notes))
    score = music21.converter.parse(str(path))
    found = sorted((int(round(n.offset * 4)), int(round(n.quarterLength * 4)), p.midi)
                   for part in score.parts for n in part.flatten().stripTies().notes for p in n.pitches)
    assert found == sorted(map(tuple, notes[:, 1:].tolist()))


def test_midi_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="MThd"):
        midi.midi_to_notes(b"RIFF....")
    with pytest.raises(ValueError, match="bpm"):
        midi.notes_to_midi(CADENCE, bpm=0)


def test_audio_length_silence_and_pitch():
    rate, bpm = 8000, 60  # a quarter note lasts one second
    wave = midi.synthesize([[0, 0, 4, 69]], bpm=bpm, sample_rate=rate, length=12)
    assert wave.dtype == np.float32 and wave.shape == (3 * rate,)
    assert np.abs(wave[:rate]).max() > 0.05 and np.all(wave[rate:] == 0)  # the rest is exact silence
    spectrum = np.abs(np.fft.rfft(wave[:rate]))
    assert np.fft.rfftfreq(rate, 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=2)
    rest_only = midi.synthesize(np.zeros((0, 4), dtype=int), sample_rate=rate, bpm=bpm, length=8)
    assert rest_only.shape == (2 * rate,) and not rest_only.any()
    loud = midi.synthesize(music.transpose(CADENCE, 0), sample_rate=rate)
    assert np.abs(loud).max() <= 1.0
    with pytest.raises(ValueError, match="shorter"):
        midi.synthesize(CADENCE, length=4)


# -- statistics -------------------------------------------------------------------------------------


def test_statistics_of_a_scale_and_a_chord():
    c_major = [[0, 4 * i, 4, p] for i, p in enumerate((60, 62, 64, 65, 67, 69, 71, 72))]
    root, ratio = music_metrics.key_and_in_key_ratio(c_major)
    assert (root, ratio) == (0, 1.0)
    chromatic = [[0, 4 * i, 4, 60 + i] for i in range(12)]
    assert music_metrics.key_and_in_key_ratio(chromatic)[1] == pytest.approx(7 / 12)
    g_major = music.transpose(c_major, 7)
    assert music_metrics.key_and_in_key_ratio(g_major)[0] == 7
    np.testing.assert_allclose(music_metrics.key_aligned_histogram(g_major),
                               music_metrics.key_aligned_histogram(c_major))
    hist = music_metrics.pitch_class_histogram(c_major)
    assert hist[0] == pytest.approx(2 / 8) and hist[1] == 0 and hist.sum() == pytest.approx(1)
    assert music_metrics.polyphony(CADENCE) == 4.0 and music_metrics.polyphony(c_major) == 1.0
    assert music_metrics.voice_crossing_rate(CADENCE) == 0.0
    crossed = [[0, 0, 4, 60], [1, 0, 4, 64], [0, 4, 4, 67], [1, 4, 4, 64]]  # the alto above the soprano, then not
    assert music_metrics.voice_crossing_rate(crossed) == 0.5
    np.testing.assert_allclose(music_metrics.duration_histogram(CADENCE)[[3, 5]], [8 / 12, 4 / 12])


def test_parallel_fifths_and_octaves_are_counted():
    fifths = [[0, 0, 4, 67], [3, 0, 4, 48], [0, 4, 4, 69], [3, 4, 4, 50]]  # C-G to D-A: parallel fifths
    assert music_metrics.parallel_perfect_intervals(fifths) == (1, 1)
    octaves = [[0, 0, 4, 72], [3, 0, 4, 48], [0, 4, 4, 74], [3, 4, 4, 50]]
    assert music_metrics.parallel_perfect_intervals(octaves) == (1, 1)
    contrary = [[0, 0, 4, 72], [3, 0, 4, 48], [0, 4, 4, 71], [3, 4, 4, 55]]  # octave to a third
    assert music_metrics.parallel_perfect_intervals(contrary) == (0, 1)
    oblique = [[0, 0, 8, 67], [3, 0, 4, 48], [3, 4, 4, 43]]  # one voice holds: no motion of the pair
    assert music_metrics.parallel_perfect_intervals(oblique) == (0, 0)


def test_musical_statistics_and_distances(chorales):
    real = music_metrics.musical_statistics(chorales.notes)
    assert real["in_key"] > 0.85 and real["crossing"] < 0.05 and real["polyphony"] > 3.5
    assert music_metrics.histogram_distance(real["pitch_classes"], real["pitch_classes"]) == 0.0
    noise = music_metrics.musical_statistics(music_metrics.random_notes(30, 128, seed=0), real)
    assert noise["in_key"] < real["in_key"] - 0.1
    assert noise["pitch_class_distance"] > 0.15 and noise["crossing"] > 0.1
    with pytest.raises(ValueError, match="empty"):
        music_metrics.musical_statistics([np.zeros((0, 4), dtype=int)])
    assert music_metrics.histogram_distance([1, 0], [0, 1]) == 1.0


def test_longest_shared_run_finds_copies(chorales):
    piece, others = chorales.notes[0], chorales.notes[1:]
    assert music_metrics.longest_shared_run([piece], [piece])[0] == music.length_in_steps(piece)
    # a piece made of 20 steps of another chorale, transposed out of the way elsewhere
    source = others[2]
    grid = music.notes_to_grid(source)[:, 8:28]
    splice = np.concatenate([music.notes_to_grid(music.transpose(CADENCE, 1)), grid], axis=1)
    found = music_metrics.longest_shared_run([music.grid_to_notes(splice)], others)[0]
    assert found >= 20
    shared = music_metrics.longest_shared_run([music.transpose(CADENCE, 1)], others)[0]
    assert shared < 16


# -- likelihoods ------------------------------------------------------------------------------------


def test_ngram_probabilities_are_normalised_and_unigram_is_smoothed_counts():
    rng = np.random.default_rng(0)
    V = 5
    train = [np.concatenate([[0], rng.integers(1, V, 30)]) for _ in range(4)]
    for order in (1, 2, 3):
        model = music_metrics.NGramModel(order, vocab_size=V, concentration=0.7).fit(train)
        context = [0, 3, 2]
        total = sum(2.0 ** model.log2_probs([np.array(context + [w])])[-1] for w in range(V))
        assert total == pytest.approx(1.0)
    counts = np.bincount(np.concatenate([t[1:] for t in train]), minlength=V)
    unigram = music_metrics.NGramModel(1, vocab_size=V, concentration=2.0).fit(train)
    p = (counts + 2.0 / V) / (counts.sum() + 2.0)
    seq = np.array([0, 1, 2, 4])
    np.testing.assert_allclose(unigram.log2_probs([seq]), np.log2(p[seq[1:]]))
    # one fit of a higher order holds every lower order's counts
    trigram = music_metrics.NGramModel(3, vocab_size=V, concentration=0.5).fit(train)
    bigram = music_metrics.NGramModel(2, vocab_size=V, concentration=1.5).fit(train)
    assert trigram.bits_per_token([seq], order=2, concentration=1.5) == pytest.approx(bigram.bits_per_token([seq]))
    with pytest.raises(ValueError, match="higher"):
        bigram.bits_per_token([seq], order=3)
    with pytest.raises(ValueError, match="fit"):
        music_metrics.NGramModel(2).bits_per_token([seq])
    with pytest.raises(ValueError, match="ids"):
        music_metrics.NGramModel(2, vocab_size=V).fit([np.array([0, 7])])


def _gpt(max_length=8, vocab=11, seed=0):
    keras.utils.set_random_seed(seed)
    model = transformer.GPT(vocab, max_length, width=16, depth=1, num_heads=2)
    model.build((None, max_length))
    return model


def _direct_bits(model, seq):
    # Score each token with its whole past (seq must fit into the context).
    logits = ops.convert_to_numpy(model(np.asarray(seq[:-1], "int32")[None], training=False))[0].astype("float64")
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -log_p[np.arange(len(seq) - 1), seq[1:]].sum() / math.log(2)


def test_bits_per_token_scores_every_token_once_with_the_right_context():
    model = _gpt(max_length=8)
    rng = np.random.default_rng(1)
    short = [rng.integers(0, 11, n) for n in (3, 5, 9)]  # all fit into one window of 8
    expected = sum(_direct_bits(model, s) for s in short) / sum(len(s) - 1 for s in short)
    assert music_metrics.bits_per_token(model, short) == pytest.approx(expected, rel=1e-5)
    # A long sequence read with stride 8 (no overlap) is the sum over its consecutive windows.
    long = rng.integers(0, 11, 25)
    chunks = [long[i: i + 9] for i in range(0, 24, 8)]
    expected = sum(_direct_bits(model, c) for c in chunks) / 24
    assert music_metrics.bits_per_token(model, [long], stride=8) == pytest.approx(expected, rel=1e-5)
    # With overlap, more context can only be given, and the count of scored tokens is the same.
    assert np.isfinite(music_metrics.bits_per_token(model, [long], stride=3))
    with pytest.raises(ValueError, match="stride"):
        music_metrics.bits_per_token(model, [long], stride=9)


def test_decode_samples_reads_rows_up_to_eos():
    tokens = music.notes_to_tokens(CADENCE)
    rows = np.stack([np.pad(tokens, (0, 3), constant_values=music.note_token(0, 60)),
                     np.pad(tokens[:-1], (0, 4), constant_values=music.duration_token(2))])
    pieces, errors = music_metrics.decode_samples(rows)
    np.testing.assert_array_equal(pieces[0], CADENCE)  # what follows EOS is not read
    np.testing.assert_array_equal(pieces[1], CADENCE)
    assert errors == 4  # four stray durations


# -- MuseGAN ----------------------------------------------------------------------------------------


def _musegan(seed=0):
    keras.utils.set_random_seed(seed)
    g = musegan.build_musegan_generator(z_dim=4, bars=2, steps_per_bar=8, num_pitches=16, filters=4)
    d = musegan.build_musegan_critic(bars=2, steps_per_bar=8, num_pitches=16, filters=4)
    return musegan.MuseGAN(g, d, n_critic=2, seed=seed)


def test_generator_shapes_and_one_note_per_track_and_step():
    model = _musegan()
    z = np.random.default_rng(0).normal(size=(3, model.latent_dim)).astype("float32")
    rolls = ops.convert_to_numpy(model.generator(z))
    assert rolls.shape == (3, 2, 8, 16, 4)
    np.testing.assert_array_equal(rolls.sum(axis=3), np.ones((3, 2, 8, 4)))
    assert set(np.unique(rolls)) == {0.0, 1.0}
    soft = musegan.build_musegan_generator(z_dim=4, bars=2, steps_per_bar=8, num_pitches=16, filters=4, hard=False)
    probs = ops.convert_to_numpy(soft(z))
    np.testing.assert_allclose(probs.sum(axis=3), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="multiples of 4"):
        musegan.build_musegan_generator(steps_per_bar=6)


def test_straight_through_passes_the_softmax_gradient():
    layer = musegan.StraightThroughOneHot(axis=-1)
    p = ops.convert_to_tensor(np.array([[0.2, 0.5, 0.3]], "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(p)), [[0, 1, 0]])

    weights = ops.convert_to_tensor(np.array([1.0, 2.0, 3.0], "float32"))
    grad = _util.input_gradient(lambda x: layer(x) * weights, p)
    w = ops.convert_to_numpy(ops.stop_gradient(grad))
    np.testing.assert_allclose(w, [[1.0, 2.0, 3.0]])


def test_private_latents_move_only_their_track():
    model = _musegan()
    latents = model.latents(2, seed=3)
    base = model.generate_from(latents)
    changed = {k: v.copy() for k, v in latents.items()}
    changed["melody"][:, 1] = -changed["melody"][:, 1]
    changed["groove"][:, 1] = changed["groove"][:, 1] + 2.0
    other = model.generate_from(changed)
    assert not np.array_equal(base[..., 1], other[..., 1])
    for k in (0, 2, 3):
        np.testing.assert_array_equal(base[..., k], other[..., k])
    shared = {k: v.copy() for k, v in latents.items()}
    shared["chords"] = shared["chords"] + 2.0
    moved = model.generate_from(shared)
    assert all(not np.array_equal(base[..., k], moved[..., k]) for k in range(4))


def test_generate_is_seeded_and_one_hot():
    model = _musegan()
    a = model.generate(5, seed=7, batch_size=2)
    assert isinstance(a, np.ndarray) and a.shape == (5, 2, 8, 16, 4)
    np.testing.assert_array_equal(a.sum(axis=3), 1.0)
    np.testing.assert_array_equal(a, model.generate(5, seed=7))
    assert not np.array_equal(a, model.generate(5, seed=8))
    np.testing.assert_array_equal(a, model.generate_from(model.latents(5, seed=7)))


def test_musegan_trains_and_round_trips_through_keras_files(tmp_path):
    model = _musegan()
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    # random one-hot rolls on the test model's 16 pitches
    index = np.random.default_rng(0).integers(0, 16, size=(8, 2, 8, 4))
    rolls = np.moveaxis(np.eye(16, dtype="float32")[index], -1, -2)
    history = model.fit(rolls, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["critic_loss"][-1])
    path = tmp_path / "musegan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, musegan.MuseGAN)
    np.testing.assert_array_equal(loaded.generate(3, seed=1), model.generate(3, seed=1))


def test_roll_windows_and_batches_keep_voices_in_range(chorales):
    windows = musegan.roll_windows(chorales, bars=2)
    assert windows.ndim == 3 and windows.shape[1:] == (32, 4) and (windows >= 0).all()
    batches = musegan.RollBatches(windows, bars=2, batch_size=16, num_batches=3, seed=0)
    assert len(batches) == 3
    for rolls in (batches[0], batches[2]):
        assert rolls.shape == (16, 2, 16, 48, 4)
        for v, piece in enumerate(np.moveaxis(rolls, -1, 0)):
            pitches = piece.argmax(axis=-1) + music.ROLL_LOWEST
            lo, hi = music.VOICE_RANGES[v]
            assert pitches.min() >= lo and pitches.max() <= hi
    np.testing.assert_array_equal(batches[1], musegan.RollBatches(windows, 2, 16, 3, seed=0)[1])


def test_split_latents_layer_round_trips():
    layer = musegan.SplitLatents(3)
    parts = layer(np.arange(12, dtype="float32").reshape(2, 6))
    assert len(parts) == 3 and tuple(parts[0].shape) == (2, 2)
    assert musegan.SplitLatents.from_config(layer.get_config()).parts == 3
    with pytest.raises(ValueError, match="parts"):
        musegan.SplitLatents(0)


# -- the piano-roll figure --------------------------------------------------------------------------


def test_piano_roll_figure():
    fig = plot.piano_roll([CADENCE, music.transpose(CADENCE, 2)], titles=["a", "b"], bar_steps=16)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "b"
    assert len(fig.axes[0].patches) == len(CADENCE)
    one = plot.piano_roll(CADENCE, max_steps=8)
    assert len(one.axes) == 1
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        plot.piano_roll([np.zeros((3, 3), dtype=int)])
