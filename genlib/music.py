"""Music generation: Bach chorales as notes, a time grid and event tokens; MIDI, audio, statistics, MuseGAN.

Chapter 14 (chapters/14_music.ipynb).

A chorale is four voices (soprano, alto, tenor, bass) singing one note at a time. Everything
here starts from one plain representation, the **note list**: an int array (N, 4) whose
columns are ``VOICE, START, DURATION, PITCH``, with times in **steps** of a sixteenth note
and pitches as MIDI numbers (60 is middle C). From it:

* ``notes_to_grid`` / ``grid_to_notes``: the **time grid** (4 voices x T steps) of
  DeepBach and Coconet, each cell a pitch (a note starts), ``HOLD`` or ``REST``.
* ``notes_to_tokens`` / ``tokens_to_notes``: the **event tokens** of a music transformer:
  ``NOTE(voice, pitch)`` then ``DURATION(d)`` for every note, ``SHIFT(k)`` to move time on.
* ``notes_to_roll`` / ``roll_to_notes``: MuseGAN's multi-track **piano roll**
  (bars x steps x pitches x tracks), one-hot over pitch.
* ``notes_to_midi`` / ``midi_to_notes``: a Standard MIDI File, written and read with NumPy
  and ``struct`` alone; ``synthesize``: a waveform from a small additive synthesiser.
* ``load_chorales``: the Bach chorales that ship inside the ``music21`` package, read with a
  small MusicXML reader (``read_musicxml``) and cached as arrays; ``split``, ``transpose``
  and ``augment`` (transpositions that keep every voice in its range).
* Measuring: ``NGramModel`` (the count baselines, in bits per token), ``bits_per_token``
  of a ``genlib.transformer.GPT``, musical statistics (``musical_statistics``) and the
  plagiarism check ``longest_shared_run``.
* ``MuseGAN``: a multi-track WGAN-GP (``genlib.gan.WGANGP``) whose generator splits its
  noise into shared (chords, style) and private (melody, groove) latents.
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree

import keras
import numpy as np
from keras import layers, ops

from genlib import _util, gan

VOICES = ("soprano", "alto", "tenor", "bass")
# Each voice's lowest and highest MIDI pitch in the 361 four-voice chorales of music21's corpus.
# Transposition augmentation keeps every voice inside its range; the note tokens cover it exactly.
VOICE_RANGES = ((57, 81), (53, 74), (48, 69), (36, 64))
STEPS_PER_QUARTER = 4  # the grid's step is a sixteenth note
VOICE, START, DURATION, PITCH = range(4)  # the columns of a note list

# ---------------------------------------------------------------------------
# Note lists


def check_notes(notes) -> np.ndarray:
    """A note list as a sorted int64 array (N, 4), or a ValueError saying what is wrong.

    Columns ``VOICE`` (0..3), ``START`` (>= 0 steps), ``DURATION`` (>= 1 step), ``PITCH``
    (0..127). Sorted by start time, then voice. Notes of one voice must not overlap: a voice
    sings one note at a time.
    """
    notes = np.asarray(notes)
    if notes.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if notes.ndim != 2 or notes.shape[1] != 4 or not np.issubdtype(notes.dtype, np.integer):
        raise ValueError(f"notes must be an int array (N, 4) of voice, start, duration, pitch; "
                         f"got {notes.dtype} {notes.shape}.")
    notes = notes.astype(np.int64)
    for col, name, low, high in ((VOICE, "voice", 0, len(VOICES) - 1), (START, "start", 0, None),
                                 (DURATION, "duration", 1, None), (PITCH, "pitch", 0, 127)):
        bad = (notes[:, col] < low) | ((notes[:, col] > high) if high is not None else False)
        if bad.any():
            raise ValueError(f"note {notes[bad][0].tolist()} has {name} outside "
                             f"[{low}, {high if high is not None else 'inf'}].")
    notes = notes[np.lexsort((notes[:, VOICE], notes[:, START]))]
    for v in range(len(VOICES)):
        mine = notes[notes[:, VOICE] == v]
        overlap = mine[1:, START] < mine[:-1, START] + mine[:-1, DURATION]
        if overlap.any():
            i = int(np.argmax(overlap))
            raise ValueError(f"notes {mine[i].tolist()} and {mine[i + 1].tolist()} of voice {v} overlap.")
    return notes


def length_in_steps(notes) -> int:
    """The end of the last note (steps)."""
    notes = np.asarray(notes)
    return int((notes[:, START] + notes[:, DURATION]).max()) if len(notes) else 0


def crop(notes, start: int = 0, end: int | None = None) -> np.ndarray:
    """The music between steps ``start`` and ``end``, moved to start at 0; notes that cross a cut are shortened."""
    notes = check_notes(notes).copy()
    end = length_in_steps(notes) if end is None else end
    stop = np.minimum(notes[:, START] + notes[:, DURATION], end)
    notes[:, START] = np.maximum(notes[:, START], start)
    notes[:, DURATION] = stop - notes[:, START]
    notes = notes[notes[:, DURATION] > 0]
    notes[:, START] -= start
    return check_notes(notes)


def transpose(notes, semitones: int) -> np.ndarray:
    """The same notes ``semitones`` higher (negative: lower)."""
    notes = check_notes(notes).copy()
    notes[:, PITCH] += int(semitones)
    return check_notes(notes)


def transpositions_in_range(notes, max_shift: int = 6, ranges=VOICE_RANGES) -> list[int]:
    """The shifts in [-max_shift, max_shift] that keep every voice inside its range (0 included if it fits)."""
    notes = check_notes(notes)
    low, high = -int(max_shift), int(max_shift)
    for v, (lo, hi) in enumerate(ranges):
        pitches = notes[notes[:, VOICE] == v, PITCH]
        if len(pitches):
            low, high = max(low, lo - int(pitches.min())), min(high, hi - int(pitches.max()))
    return list(range(low, high + 1))


def augment(pieces, max_shift: int = 6, ranges=VOICE_RANGES) -> list[np.ndarray]:
    """Every piece in every transposition that keeps its voices in range (the original among them)."""
    return [transpose(p, s) for p in pieces for s in transpositions_in_range(p, max_shift, ranges)]


# ---------------------------------------------------------------------------
# Encoding 1: the time grid

HOLD = -1  # the voice keeps singing the note it started earlier
REST = -2  # the voice is silent


def notes_to_grid(notes, length: int | None = None) -> np.ndarray:
    """The time grid: int array (4, T), one row per voice, one column per sixteenth.

    A cell holds the MIDI pitch where a note starts, ``HOLD`` while it sounds on, ``REST``
    where the voice is silent. ``length``: T (default: the end of the last note).
    """
    notes = check_notes(notes)
    end = length_in_steps(notes)
    length = end if length is None else _util.positive_int("length", length, 0)
    if length < end:
        raise ValueError(f"length={length} is shorter than the music ({end} steps).")
    grid = np.full((len(VOICES), length), REST, dtype=np.int64)
    for v, start, duration, pitch in notes:
        grid[v, start: start + duration] = HOLD
        grid[v, start] = pitch
    return grid


def grid_to_notes(grid) -> np.ndarray:
    """The note list of a time grid (4, T); a ``HOLD`` after a ``REST`` (or at the start) is read as a rest."""
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[0] != len(VOICES):
        raise ValueError(f"grid must be (4, T), got shape {grid.shape}.")
    notes = []
    for v, row in enumerate(grid):
        onsets = np.flatnonzero(row >= 0)
        for start in onsets:
            end = start + 1
            while end < len(row) and row[end] == HOLD:
                end += 1
            notes.append((v, start, end - start, row[start]))
    return check_notes(np.array(notes, dtype=np.int64).reshape(-1, 4))


# ---------------------------------------------------------------------------
# Encoding 2: event tokens

BOS, EOS = 0, 1
MAX_SHIFT = 16  # one 4/4 bar; longer gaps take several SHIFT tokens
MAX_DURATION = 64  # four 4/4 bars: the longest note in the corpus
SHIFT_BASE = 2  # SHIFT(k), k = 1..MAX_SHIFT
DURATION_BASE = SHIFT_BASE + MAX_SHIFT  # DURATION(d), d = 1..MAX_DURATION
NOTE_BASE = DURATION_BASE + MAX_DURATION  # NOTE(voice, pitch), pitch within the voice's range
_NOTE_OFFSETS = np.cumsum([0] + [hi - lo + 1 for lo, hi in VOICE_RANGES])
VOCAB_SIZE = NOTE_BASE + int(_NOTE_OFFSETS[-1])
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def shift_token(k: int) -> int:
    """The token that moves time on by k steps (1..MAX_SHIFT)."""
    if not 1 <= k <= MAX_SHIFT:
        raise ValueError(f"a shift must be 1..{MAX_SHIFT} steps, got {k}.")
    return SHIFT_BASE + k - 1


def duration_token(d: int) -> int:
    """The token of a note's duration, d = 1..MAX_DURATION steps."""
    if not 1 <= d <= MAX_DURATION:
        raise ValueError(f"a duration must be 1..{MAX_DURATION} steps, got {d}.")
    return DURATION_BASE + d - 1


def note_token(voice: int, pitch: int) -> int:
    """The token that starts a note of ``pitch`` in ``voice``; the pitch must lie in the voice's range."""
    lo, hi = VOICE_RANGES[voice]
    if not lo <= pitch <= hi:
        raise ValueError(f"pitch {pitch} is outside the {VOICES[voice]}'s range [{lo}, {hi}].")
    return NOTE_BASE + int(_NOTE_OFFSETS[voice]) + pitch - lo


def pitch_name(pitch: int) -> str:
    """``60 -> 'C4'`` (scientific pitch notation)."""
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def describe_token(token: int) -> tuple[str, int, int]:
    """What a token means, as ``(kind, a, b)``.

    ``("bos", 0, 0)``, ``("eos", 0, 0)``, ``("shift", k, 0)``, ``("duration", d, 0)`` or ``("note", voice, pitch)``.
    """
    token = int(token)
    if token == BOS:
        return "bos", 0, 0
    if token == EOS:
        return "eos", 0, 0
    if SHIFT_BASE <= token < DURATION_BASE:
        return "shift", token - SHIFT_BASE + 1, 0
    if DURATION_BASE <= token < NOTE_BASE:
        return "duration", token - DURATION_BASE + 1, 0
    if NOTE_BASE <= token < VOCAB_SIZE:
        voice = int(np.searchsorted(_NOTE_OFFSETS, token - NOTE_BASE, side="right")) - 1
        return "note", voice, VOICE_RANGES[voice][0] + token - NOTE_BASE - int(_NOTE_OFFSETS[voice])
    raise ValueError(f"token {token} is outside the vocabulary [0, {VOCAB_SIZE - 1}].")


def token_name(token: int) -> str:
    """A short label: ``<s>``, ``</s>``, ``+4`` (shift), ``d4`` (duration), ``S:C5`` (soprano's C5)."""
    kind, a, b = describe_token(token)
    return {"bos": "<s>", "eos": "</s>", "shift": f"+{a}", "duration": f"d{a}",
            "note": f"{'SATB'[a]}:{pitch_name(b)}" if kind == "note" else ""}[kind]


def notes_to_tokens(notes) -> np.ndarray:
    """Event tokens of a note list: ``BOS``, then per start time its notes in voice order
    (``NOTE(v, p) DURATION(d)`` each) and ``SHIFT`` tokens to the next start time, then ``EOS``.

    Rests need no token: a voice is silent wherever none of its notes sounds.
    """
    notes = check_notes(notes)
    out, now = [BOS], 0
    for v, start, duration, pitch in notes:
        gap = int(start - now)
        while gap > 0:
            step = min(gap, MAX_SHIFT)
            out.append(shift_token(step))
            gap -= step
        now = start
        out += [note_token(v, pitch), duration_token(duration)]
    out.append(EOS)
    return np.array(out, dtype=np.int32)


def tokens_to_notes(tokens, strict: bool = True) -> tuple[np.ndarray, int]:
    """The note list of a token sequence, and the number of tokens that broke the grammar.

    Reading stops at ``EOS``. ``strict``: raise on the first broken rule (a round trip of real
    music must not break any). Otherwise, as for a model's samples, skip what cannot be read:
    a ``NOTE`` not followed by a ``DURATION``, a stray ``DURATION`` or ``BOS``; a note that
    starts while the same voice still sounds cuts the earlier note short.
    """
    tokens = np.asarray(tokens).reshape(-1)
    notes, now, errors, i = [], 0, 0, 0
    last = {}  # voice -> index in notes of its latest note

    def broken(message):
        nonlocal errors
        if strict:
            raise ValueError(f"token {i} ({token_name(tokens[i])}): {message}")
        errors += 1

    if len(tokens) and tokens[0] == BOS:
        i = 1
    while i < len(tokens):
        kind, a, b = describe_token(tokens[i])
        if kind == "eos":
            break
        if kind == "shift":
            now += a
        elif kind == "note":
            if i + 1 >= len(tokens) or describe_token(tokens[i + 1])[0] != "duration":
                broken("a note must be followed by its duration")
            else:
                duration = describe_token(tokens[i + 1])[1]
                if a in last:
                    previous = notes[last[a]]
                    if previous[START] + previous[DURATION] > now:
                        broken("the voice is still singing its previous note")
                        previous[DURATION] = now - previous[START]
                        if previous[DURATION] == 0:
                            notes[last[a]] = None
                last[a] = len(notes)
                notes.append([a, now, duration, b])
                i += 1
        else:
            broken(f"unexpected {kind} token")
        i += 1
    notes = [n for n in notes if n is not None]
    return check_notes(np.array(notes, dtype=np.int64).reshape(-1, 4)), errors


# ---------------------------------------------------------------------------
# Encoding 3: MuseGAN's multi-track piano roll

ROLL_LOWEST = 34  # MIDI pitch of the roll's first row; 48 rows reach 81, the soprano's top


def notes_to_roll(notes, start: int = 0, bars: int = 2, steps_per_bar: int = 16, lowest: int = ROLL_LOWEST,
                  num_pitches: int = 48) -> np.ndarray:
    """A one-hot multi-track piano roll (bars, steps_per_bar, num_pitches, 4) of the music from ``start``.

    Cell ``[b, s, p, v]`` is 1 where voice v sounds pitch ``lowest + p`` at step s of bar b.
    A roll has no symbol for "this note starts again": a repeated note reads as one long note.
    """
    notes = check_notes(notes)
    steps = bars * steps_per_bar
    grid = notes_to_grid(notes, max(length_in_steps(notes), start + steps))[:, start: start + steps]
    roll = np.zeros((steps, num_pitches, len(VOICES)), dtype="float32")
    for v, row in enumerate(grid):
        pitch = _sounding_pitch(row)
        on = pitch >= 0
        if np.any((pitch[on] < lowest) | (pitch[on] >= lowest + num_pitches)):
            raise ValueError(f"voice {v} leaves the roll's pitch range [{lowest}, {lowest + num_pitches - 1}].")
        roll[np.flatnonzero(on), pitch[on] - lowest, v] = 1.0
    return roll.reshape(bars, steps_per_bar, num_pitches, len(VOICES))


def _sounding_pitch(row):
    # Per step, the pitch sounding in this voice (-1 in a rest): carry each onset over its HOLDs.
    idx = np.where(row != HOLD, np.arange(len(row)), 0)
    np.maximum.accumulate(idx, out=idx)
    pitch = row[idx]
    return np.where(pitch >= 0, pitch, -1)


def roll_to_notes(roll, lowest: int = ROLL_LOWEST) -> np.ndarray:
    """The note list of a piano roll (bars, steps, pitches, 4): per voice and step the most
    active pitch (none where the column is all zero); equal neighbours merge into one note."""
    roll = np.asarray(roll)
    if roll.ndim != 4 or roll.shape[-1] != len(VOICES):
        raise ValueError(f"roll must be (bars, steps, pitches, 4), got shape {roll.shape}.")
    flat = roll.reshape(-1, roll.shape[2], len(VOICES))
    pitch = np.where(flat.max(axis=1) > 0, flat.argmax(axis=1) + lowest, -1)  # (T, 4)
    notes = []
    for v in range(len(VOICES)):
        row, t = pitch[:, v], 0
        while t < len(row):
            end = t + 1
            while end < len(row) and row[end] == row[t]:
                end += 1
            if row[t] >= 0:
                notes.append((v, t, end - t, row[t]))
            t = end
    return check_notes(np.array(notes, dtype=np.int64).reshape(-1, 4))


# ---------------------------------------------------------------------------
# MIDI: a Standard MIDI File (format 0), one channel per voice

TICKS_PER_QUARTER = 480


def _varlen(value):
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def notes_to_midi(notes, bpm: float = 80.0, program: int = 52, velocity: int = 80) -> bytes:
    """A Standard MIDI File (bytes) of the notes: voice v plays on channel v.

    Args:
        bpm: quarter notes per minute.
        program: General MIDI instrument, 0-based (52: "choir aahs").
        velocity: loudness of every note, 1..127.
    Write it with ``Path("x.mid").write_bytes(...)``; any sequencer or ``music21`` reads it.
    """
    notes = check_notes(notes)
    bpm = _util.number("bpm", bpm, low=0, low_open=True)
    ticks = TICKS_PER_QUARTER // STEPS_PER_QUARTER
    events = []  # (tick, order, bytes): at one tick, note-offs (order 0) before note-ons (1)
    for v, start, duration, pitch in notes:
        events.append((start * ticks, 1, bytes([0x90 | v, pitch, velocity])))
        events.append(((start + duration) * ticks, 0, bytes([0x80 | v, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    tempo = round(60_000_000 / bpm)  # microseconds per quarter note
    track = b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big")
    track += b"".join(b"\x00" + bytes([0xC0 | v, program]) for v in range(len(VOICES)))
    now = 0
    for tick, _, message in events:
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def midi_to_notes(data: bytes) -> tuple[np.ndarray, float]:
    """The notes (channel = voice, ticks rounded to sixteenths) and tempo (bpm) of a MIDI file's bytes."""
    data = bytes(data)
    if data[:4] != b"MThd":
        raise ValueError("not a Standard MIDI File (no MThd header).")
    _, num_tracks, division = struct.unpack(">HHH", data[8:14])
    if division & 0x8000:
        raise ValueError("SMPTE time division is not supported; expected ticks per quarter note.")
    ticks = Fraction(division, STEPS_PER_QUARTER)
    pos, notes, sounding, bpm = 14, [], {}, 120.0
    for _ in range(num_tracks):
        if data[pos:pos + 4] != b"MTrk":
            raise ValueError(f"expected a track chunk at byte {pos}.")
        end = pos + 8 + struct.unpack(">I", data[pos + 4:pos + 8])[0]
        pos, tick, status = pos + 8, 0, 0
        while pos < end:
            delta = 0
            while True:
                byte = data[pos]
                pos += 1
                delta = (delta << 7) | (byte & 0x7F)
                if byte < 0x80:
                    break
            tick += delta
            if data[pos] >= 0x80:
                status = data[pos]
                pos += 1
            if status == 0xFF:  # meta event: type, length, payload
                kind, length = data[pos], data[pos + 1]
                if kind == 0x51:
                    bpm = 60_000_000 / int.from_bytes(data[pos + 2:pos + 5], "big")
                pos += 2 + length
                continue
            if status in (0xF0, 0xF7):  # system exclusive: length, payload
                length = data[pos]
                pos += 1 + length
                continue
            kind, channel = status & 0xF0, status & 0x0F
            size = 1 if kind in (0xC0, 0xD0) else 2  # program change and channel pressure carry one byte
            args = data[pos:pos + size]
            pos += size
            if kind == 0x90 and args[1] > 0:
                sounding[(channel, args[0])] = tick
            elif kind in (0x80, 0x90) and (channel, args[0]) in sounding:
                begin = sounding.pop((channel, args[0]))
                start, stop = round(begin / ticks), round(tick / ticks)
                notes.append((channel, start, max(stop - start, 1), args[0]))
        pos = end
    return check_notes(np.array(notes, dtype=np.int64).reshape(-1, 4)), bpm


# ---------------------------------------------------------------------------
# Audio: a small additive synthesiser


def synthesize(notes, bpm: float = 80.0, sample_rate: int = 16000, harmonics=(1.0, 0.5, 0.3, 0.15),
               attack: float = 0.02, release: float = 0.06, length: int | None = None) -> np.ndarray:
    """A mono waveform (float32 in [-1, 1], ``sample_rate`` samples per second) of the notes.

    Each note is a sum of sine harmonics ``sum_h a_h sin(2 pi h f t)``, ``f = 440 * 2**((pitch - 69) / 12)``,
    shaped by an envelope that rises over ``attack`` seconds, decays gently, and falls to 0
    over the last ``release`` seconds of the note, so each note sounds only within its own
    duration and a rest is exact silence. Harmonics at or above the Nyquist frequency are dropped.

    The waveform has ``round(T * 60 / (4 * bpm) * sample_rate)`` samples for T steps
    (``length``, default: the end of the last note).
    """
    notes = check_notes(notes)
    bpm = _util.number("bpm", bpm, low=0, low_open=True)
    sample_rate = _util.positive_int("sample_rate", sample_rate)
    end = length_in_steps(notes)
    length = end if length is None else _util.positive_int("length", length, 0)
    if length < end:
        raise ValueError(f"length={length} is shorter than the music ({end} steps).")
    seconds_per_step = 60.0 / (bpm * STEPS_PER_QUARTER)
    at = lambda step: int(round(step * seconds_per_step * sample_rate))  # noqa: E731
    out = np.zeros(at(length), dtype="float64")
    for _, start, duration, pitch in notes:
        i, j = at(start), at(start + duration)
        t = np.arange(j - i) / sample_rate
        f = 440.0 * 2.0 ** ((pitch - 69) / 12)
        wave = sum(a * np.sin(2 * np.pi * h * f * t) for h, a in enumerate(harmonics, 1) if h * f < sample_rate / 2)
        rise = np.clip(t / attack, 0.0, 1.0)
        fall = np.clip((t[-1] - t) / release, 0.0, 1.0) if len(t) else t
        out[i:j] += wave * rise * fall * np.exp(-1.5 * t)
    peak = sum(harmonics) * len(VOICES)  # the loudest four voices can be: no clipping, no normalising
    return (out / peak).astype("float32")


# ---------------------------------------------------------------------------
# The data: Bach chorales from music21's corpus


class ChoraleError(ValueError):
    """A score that is not a usable four-voice chorale; ``reason`` says why."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


_STEP_SEMITONES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def read_musicxml(source) -> dict:
    """Read a four-voice chorale from MusicXML (``.xml``, or compressed ``.mxl``): a path or the file's bytes.

    Returns ``{"notes": (N, 4) note list, "steps_per_bar": int, "first_downbeat": int,
    "grace_notes": int}``; ``first_downbeat`` is the length of a pick-up bar (0 without one).
    Tied notes become one note; grace notes (no duration) are dropped and counted. Raises
    ``ChoraleError`` for a score it cannot use: not four parts, two notes at once in a part
    (a chord), a time off the sixteenth-note grid, a note outside the voice's range or longer
    than ``MAX_DURATION``.
    """
    raw = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    try:
        if raw[:2] == b"PK":  # .mxl: a zip archive holding the score
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                container = ElementTree.fromstring(archive.read("META-INF/container.xml"))
                raw = archive.read(next(e.get("full-path") for e in container.iter() if e.tag.endswith("rootfile")))
        root = ElementTree.fromstring(raw)
    except (zipfile.BadZipFile, KeyError, StopIteration, ElementTree.ParseError) as error:
        raise ChoraleError("unreadable file", str(error)) from None
    parts = root.findall("part")
    if len(parts) != len(VOICES):
        raise ChoraleError("not four parts", f"{len(parts)} parts")
    notes, grace, bar, first_bar = [], 0, None, None
    for v, part in enumerate(parts):
        time_q, divisions, last = Fraction(0), 1, None  # time in quarter notes
        for m, measure in enumerate(part.findall("measure")):
            measure_start, measure_end = time_q, time_q
            for element in measure:
                if element.tag == "attributes":
                    divisions = int(element.findtext("divisions", divisions))
                    beats, beat_type = element.findtext("time/beats"), element.findtext("time/beat-type")
                    if beats and bar is None:
                        bar = Fraction(4 * int(beats), int(beat_type))
                elif element.tag in ("backup", "forward"):
                    step = Fraction(int(element.findtext("duration")), divisions)
                    time_q += -step if element.tag == "backup" else step
                elif element.tag == "note":
                    if element.find("grace") is not None:
                        grace += 1
                        continue
                    if element.find("chord") is not None:
                        raise ChoraleError("a chord in one voice", f"part {v + 1}, measure {measure.get('number')}")
                    duration = Fraction(int(element.findtext("duration")), divisions)
                    if element.find("rest") is None:
                        octave = int(element.findtext("pitch/octave"))
                        pitch = 12 * (octave + 1) + _STEP_SEMITONES[element.findtext("pitch/step")] \
                            + int(float(element.findtext("pitch/alter", "0")))
                        ties = {tie.get("type") for tie in element.findall("tie")}
                        if "stop" in ties and last is not None and last[3] == pitch and last[1] + last[2] == time_q:
                            last[2] += duration  # a tie continues the note
                        else:
                            last = [v, time_q, duration, pitch]
                            notes.append(last)
                    time_q += duration
                measure_end = max(measure_end, time_q)
            if m == 0 and v == 0:
                first_bar = measure_end - measure_start
    if bar is None:
        raise ChoraleError("no time signature")
    steps = []
    for v, start, duration, pitch in notes:
        start, duration = start * STEPS_PER_QUARTER, duration * STEPS_PER_QUARTER
        if start.denominator != 1 or duration.denominator != 1:
            raise ChoraleError("off the sixteenth-note grid", f"a note at quarter {float(start) / 4}")
        lo, hi = VOICE_RANGES[v]
        if not lo <= pitch <= hi:
            raise ChoraleError("outside a voice's range", f"{VOICES[v]} sings {pitch_name(pitch)}")
        if duration > MAX_DURATION:
            raise ChoraleError("a note longer than MAX_DURATION", f"{int(duration)} steps")
        steps.append((v, int(start), int(duration), pitch))
    try:
        notes = check_notes(np.array(steps, dtype=np.int64).reshape(-1, 4))
    except ValueError as error:
        raise ChoraleError("overlapping notes in one voice", str(error)) from None
    if not len(notes):
        raise ChoraleError("no notes")
    steps_per_bar = int(bar * STEPS_PER_QUARTER)
    pickup = int(first_bar * STEPS_PER_QUARTER) if first_bar is not None else 0
    return {"notes": notes, "steps_per_bar": steps_per_bar,
            "first_downbeat": pickup if 0 < pickup < steps_per_bar else 0, "grace_notes": grace}


def corpus_paths() -> list[Path]:
    """The Bach chorales (``corpus/bach/*.mxl``) inside the installed ``music21`` package, sorted by name."""
    try:
        import music21
    except ImportError:
        raise ImportError("the Bach chorales ship inside the music21 package: pip install music21") from None
    return sorted((Path(music21.__file__).parent / "corpus" / "bach").glob("*.mxl"))


@dataclass
class Chorales:
    """Parsed chorales: ``notes[i]`` is chorale ``names[i]``'s note list.

    ``steps_per_bar`` and ``first_downbeat`` (int arrays) place its bar lines; ``skipped``
    maps a reason to the names of the scores left out for it; ``grace_notes`` counts the
    dropped grace notes; ``parse_seconds`` is how long reading the scores took (when parsed,
    not when loaded from the cache).
    """

    names: list
    notes: list
    steps_per_bar: np.ndarray
    first_downbeat: np.ndarray
    skipped: dict = field(default_factory=dict)
    grace_notes: int = 0
    parse_seconds: float = 0.0
    from_cache: bool = False

    def __len__(self):
        return len(self.names)

    def subset(self, index) -> Chorales:
        index = list(index)
        return Chorales([self.names[i] for i in index], [self.notes[i] for i in index],
                        self.steps_per_bar[index], self.first_downbeat[index], self.skipped, self.grace_notes,
                        self.parse_seconds, self.from_cache)


def parse_chorales(paths, progress=None) -> Chorales:
    """Read every score in ``paths`` with ``read_musicxml``; a score it cannot use is skipped and
    counted under its reason (``Chorales.skipped``), never dropped silently."""
    names, notes, bars, downbeats, skipped, grace = [], [], [], [], {}, 0
    start = time.perf_counter()
    paths = [Path(p) for p in paths]
    with _util.Progress(len(paths), enabled=progress, unit="score", label="reading chorales") as bar:
        for i, path in enumerate(paths):
            try:
                piece = read_musicxml(path)
            except ChoraleError as error:
                skipped.setdefault(error.reason, []).append(path.stem)
            except OSError as error:
                skipped.setdefault("unreadable file", []).append(f"{path.stem} ({error})")
            else:
                names.append(path.stem)
                notes.append(piece["notes"])
                bars.append(piece["steps_per_bar"])
                downbeats.append(piece["first_downbeat"])
                grace += piece["grace_notes"]
            bar.update(i + 1)
    return Chorales(names, notes, np.array(bars, dtype=np.int64), np.array(downbeats, dtype=np.int64), skipped,
                    grace, time.perf_counter() - start)


CACHE_VERSION = 1


def load_chorales(cache: bool = True, progress=None) -> Chorales:
    """The four-voice Bach chorales of music21's corpus, read once and cached as arrays.

    The cache is ``<genlib.profiles.cache_dir()>/music/bach_chorales_v1.npz`` (plain arrays,
    no pickles); ``cache=False`` reads the scores again.
    """
    from genlib.profiles import cache_dir

    path = cache_dir() / "music" / f"bach_chorales_v{CACHE_VERSION}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            flat, offsets = f["notes"], f["offsets"]
            return Chorales(list(f["names"]), [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                            f["steps_per_bar"], f["first_downbeat"], meta["skipped"], meta["grace_notes"],
                            meta["parse_seconds"], from_cache=True)
    chorales = parse_chorales(corpus_paths(), progress=progress)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"skipped": chorales.skipped, "grace_notes": chorales.grace_notes,
                "parse_seconds": chorales.parse_seconds}
        offsets = np.cumsum([0] + [len(n) for n in chorales.notes])
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, notes=np.concatenate(chorales.notes), offsets=offsets,
                            names=np.array(chorales.names), steps_per_bar=chorales.steps_per_bar,
                            first_downbeat=chorales.first_downbeat, meta=np.array(json.dumps(meta)))
        tmp.replace(path)  # whole or not at all: a half-written cache is never read
    return chorales


def split(chorales: Chorales, validation_fraction: float = 0.1, seed: int = 0) -> tuple[Chorales, Chorales]:
    """Training and validation chorales: whole chorales go to one side (no chorale is in both)."""
    validation_fraction = _util.fraction("validation_fraction", validation_fraction)
    order = np.random.default_rng(seed).permutation(len(chorales))
    n_val = max(1, int(round(validation_fraction * len(chorales))))
    return chorales.subset(sorted(order[n_val:])), chorales.subset(sorted(order[:n_val]))


# ---------------------------------------------------------------------------
# Musical statistics

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
DURATION_BINS = (1, 2, 3, 4, 6, 8, 12, 16)  # note lengths in steps; a last bin holds every other length


def sounding_pitches(notes, length: int | None = None) -> np.ndarray:
    """Int array (T, 4): the pitch each voice sounds at each step, -1 where it is silent."""
    grid = notes_to_grid(notes, length)
    return np.stack([_sounding_pitch(row) for row in grid], axis=1)


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


# ---------------------------------------------------------------------------
# MuseGAN: a multi-track GAN with shared and private latents


def roll_windows(chorales: Chorales, bars: int = 2, hop_bars: int = 1, steps_per_bar: int = 16) -> np.ndarray:
    """Every ``bars``-bar stretch, starting on a downbeat every ``hop_bars`` bars, of the chorales
    in the matching metre (``steps_per_bar``) in which all four voices sing throughout.

    Returns an int array (N, bars * steps_per_bar, 4): the MIDI pitch each voice sounds at each step.
    """
    out = []
    for notes, spb, downbeat in zip(chorales.notes, chorales.steps_per_bar, chorales.first_downbeat):
        if spb != steps_per_bar:
            continue
        pitch = sounding_pitches(notes)
        for start in range(downbeat, len(pitch) - bars * steps_per_bar + 1, hop_bars * steps_per_bar):
            window = pitch[start: start + bars * steps_per_bar]
            if (window >= 0).all():
                out.append(window)
    return np.array(out, dtype=np.int64).reshape(-1, bars * steps_per_bar, len(VOICES))


def pitches_to_roll(windows, bars: int, lowest: int = ROLL_LOWEST, num_pitches: int = 48) -> np.ndarray:
    """One-hot piano rolls (N, bars, steps, num_pitches, 4), float32, of pitch windows (N, T, 4) (``roll_windows``)."""
    windows = np.asarray(windows)
    index = windows - lowest
    if index.min() < 0 or index.max() >= num_pitches:
        raise ValueError(f"pitches must lie in [{lowest}, {lowest + num_pitches - 1}].")
    roll = np.eye(num_pitches, dtype="float32")[index]  # (N, T, 4, P)
    n, steps = len(windows), windows.shape[1] // bars
    return roll.transpose(0, 1, 3, 2).reshape(n, bars, steps, num_pitches, len(VOICES))


class RollBatches(keras.utils.PyDataset):
    """Batches of one-hot piano rolls, each window in a random transposition that keeps its voices in range.

    Args:
        windows: (N, T, 4) pitches from ``roll_windows``.
        bars: bars per window (T must be a multiple).
        batch_size, num_batches: examples per batch, batches per epoch.
        max_shift: largest transposition, semitones (0: none).
        seed: fixes which windows and shifts batch i of epoch e holds.
    """

    def __init__(self, windows, bars, batch_size, num_batches, max_shift=6, seed=0, ranges=VOICE_RANGES, **kwargs):
        super().__init__(**kwargs)
        self.windows = np.asarray(windows)
        self.bars, self.batch_size = _util.positive_int("bars", bars), _util.positive_int("batch_size", batch_size)
        self.batches_per_epoch, self.seed = _util.positive_int("num_batches", num_batches), seed
        lows, highs = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
        # The shifts that keep window i in range: [low[i], high[i]], clipped to +-max_shift.
        self.low = np.maximum(-max_shift, (lows - self.windows.min(axis=1)).max(axis=1))
        self.high = np.minimum(max_shift, (highs - self.windows.max(axis=1)).min(axis=1))
        self.epoch = 0

    def __len__(self):
        return self.batches_per_epoch

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pick = rng.integers(0, len(self.windows), self.batch_size)
        shift = rng.integers(self.low[pick], self.high[pick] + 1)
        return pitches_to_roll(self.windows[pick] + shift[:, None, None], self.bars)

    def on_epoch_end(self):
        self.epoch += 1


@keras.saving.register_keras_serializable(package="genlib")
class SplitLatents(layers.Layer):
    """Cut a noise vector into ``parts`` equal pieces. Shapes: (B, parts * d) -> ``parts`` tensors (B, d)."""

    def __init__(self, parts, **kwargs):
        super().__init__(**kwargs)
        self.parts = _util.positive_int("parts", parts)

    def call(self, z):
        return ops.split(z, self.parts, axis=-1)

    def compute_output_shape(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] % self.parts:
            raise ValueError(f"the noise length {input_shape[-1]} is not a multiple of parts={self.parts}.")
        d = None if input_shape[-1] is None else input_shape[-1] // self.parts
        return [(*input_shape[:-1], d)] * self.parts

    def get_config(self):
        return {**super().get_config(), "parts": self.parts}


@keras.saving.register_keras_serializable(package="genlib")
class StraightThroughOneHot(layers.Layer):
    """Forward: the one-hot of each distribution's most likely entry; backward: the gradient of the distribution.

    ``y = p + stop_gradient(onehot(argmax p) - p)`` equals the one-hot, but its gradient is the
    identity on ``p`` (the straight-through estimator, Bengio et al. 2013). The critic then sees
    rolls as hard as the real ones and must judge their music, not their softness.

    Args:
        axis: the axis holding each distribution. Shapes: any -> the same.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, probs):
        hard = ops.cast(probs >= ops.max(probs, axis=self.axis, keepdims=True), probs.dtype)
        return probs + ops.stop_gradient(hard - probs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def latent_layout(num_tracks: int = 4) -> list[str]:
    """Which piece of MuseGAN's noise vector is which: chords, style, melody_0.., groove_0.."""
    return ["chords", "style"] + [f"melody_{k}" for k in range(num_tracks)] + [f"groove_{k}" for k in range(num_tracks)]


def build_musegan_generator(z_dim: int = 32, bars: int = 2, steps_per_bar: int = 16, num_pitches: int = 48,
                            num_tracks: int = 4, filters: int = 32, hard: bool = True,
                            name: str = "generator") -> keras.Model:
    """MuseGAN's hybrid generator: shared and private latents, one bar generator per track.

    The noise z (B, (2 + 2K) * z_dim) is cut into (``latent_layout``): **chords** (shared by
    all tracks, a new vector per bar through a temporal network), **style** (shared, the same
    in every bar), and per track k its **melody** (private, per bar) and **groove** (private,
    fixed). Track k's bar generator sees ``[chords_b, style, melody_kb, groove_k]`` for each
    bar b: a dense layer to a coarse (steps/4, pitches/4) grid per bar, then two stride-2
    transposed convolutions over (time, pitch). A softmax over pitch gives each track one
    note per step; with ``hard`` the output is its one-hot (``StraightThroughOneHot``).

    Output: (B, bars, steps_per_bar, num_pitches, K), each (bar, step, track) a distribution
    over pitches. Changing only track k's private latents changes only track k.
    """
    z_dim, bars, steps_per_bar, num_pitches, num_tracks, filters = (
        _util.positive_int(k, v) for k, v in (("z_dim", z_dim), ("bars", bars), ("steps_per_bar", steps_per_bar),
                                              ("num_pitches", num_pitches), ("num_tracks", num_tracks),
                                              ("filters", filters)))
    if steps_per_bar % 4 or num_pitches % 4:
        raise ValueError(f"steps_per_bar and num_pitches must be multiples of 4 (two stride-2 layers), "
                         f"got {steps_per_bar} and {num_pitches}.")
    z = keras.Input((z_dim * (2 + 2 * num_tracks),), name="z")
    parts = SplitLatents(2 + 2 * num_tracks, name="split_latents")(z)
    chords, style = parts[0], parts[1]
    melody, groove = parts[2: 2 + num_tracks], parts[2 + num_tracks:]

    def temporal(x, label):  # one vector per bar: (B, z_dim) -> (B, bars, z_dim)
        h = layers.Dense(2 * z_dim, activation="relu", name=f"{label}_temporal_hidden")(x)
        return layers.Reshape((bars, z_dim))(layers.Dense(bars * z_dim, name=f"{label}_temporal")(h))

    chords_per_bar, style_per_bar = temporal(chords, "chords"), layers.RepeatVector(bars)(style)
    s0, p0 = steps_per_bar // 4, num_pitches // 4
    tracks = []
    for k in range(num_tracks):
        h = layers.Concatenate()([chords_per_bar, style_per_bar, temporal(melody[k], f"melody_{k}"),
                                  layers.RepeatVector(bars)(groove[k])])  # (B, bars, 4 z_dim)
        h = layers.Dense(s0 * p0 * 2 * filters, use_bias=False, name=f"track_{k}_dense")(h)
        h = layers.ReLU()(layers.BatchNormalization(name=f"track_{k}_bn0")(h))
        h = layers.Reshape((bars * s0, p0, 2 * filters))(h)  # the bars side by side in time
        h = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False, name=f"track_{k}_up1")(h)
        h = layers.ReLU()(layers.BatchNormalization(name=f"track_{k}_bn1")(h))
        tracks.append(layers.Conv2DTranspose(1, 4, strides=2, padding="same", name=f"track_{k}_up2")(h))
    logits = layers.Concatenate(name="tracks")(tracks)  # (B, bars * steps, pitches, K)
    probs = layers.Softmax(axis=2, name="pitch_softmax")(logits)
    if hard:
        probs = StraightThroughOneHot(axis=2, name="one_hot")(probs)
    out = layers.Reshape((bars, steps_per_bar, num_pitches, num_tracks), name="roll")(probs)
    return keras.Model(z, out, name=name)


def build_musegan_critic(bars: int = 2, steps_per_bar: int = 16, num_pitches: int = 48, num_tracks: int = 4,
                         filters: int = 32, name: str = "critic") -> keras.Model:
    """The critic: the tracks as channels of a (time, pitch) image, four stride-2 convolutions, one score.

    The first kernel spans an octave of pitch, so it can see chord shapes. LeakyReLU and no
    batch normalisation, so each example's score depends on that example only (the gradient
    penalty needs this). The convolutions have no bias: with one, TensorFlow's graph rewriter
    fuses convolution, bias and LeakyReLU into a node that the penalty's second derivative
    cannot follow, and logs "remapper failed". Shapes: (B, bars, steps_per_bar, num_pitches, K) -> (B, 1).
    """
    bars, steps_per_bar, num_pitches, num_tracks, filters = (
        _util.positive_int(k, v) for k, v in (("bars", bars), ("steps_per_bar", steps_per_bar),
                                              ("num_pitches", num_pitches), ("num_tracks", num_tracks),
                                              ("filters", filters)))
    x = keras.Input((bars, steps_per_bar, num_pitches, num_tracks), name="roll")
    h = layers.Reshape((bars * steps_per_bar, num_pitches, num_tracks))(x)
    for i, (f, kernel) in enumerate(((filters, (2, 12)), (2 * filters, (4, 5)), (4 * filters, (4, 3)),
                                     (4 * filters, (4, 3)))):
        h = layers.LeakyReLU(0.2)(layers.Conv2D(f, kernel, strides=2, padding="same", use_bias=False,
                                                name=f"conv_{i}")(h))
    return keras.Model(x, layers.Dense(1, name="score")(layers.Flatten()(h)), name=name)


@keras.saving.register_keras_serializable(package="genlib")
class MuseGAN(gan.WGANGP):
    """A multi-track WGAN-GP on piano rolls (Dong et al. 2018), trained as ``genlib.gan.WGANGP``.

    Args:
        generator: from ``build_musegan_generator``.
        discriminator: the critic, from ``build_musegan_critic``.
        n_critic, gp_weight, seed: as for ``WGANGP``.

    ``fit(RollBatches(...))``; ``generate(n)`` returns one-hot rolls; ``latents(n)`` and
    ``generate_from(latents)`` let you hold some latents fixed and vary others.
    """

    def __init__(self, generator, discriminator, **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.num_tracks = int(generator.outputs[0].shape[-1])
        self.z_dim = self.latent_dim // (2 + 2 * self.num_tracks)

    @staticmethod
    def one_hot(probs) -> np.ndarray:
        """Each (bar, step, track)'s most likely pitch, as a one-hot roll (float32 0/1)."""
        probs = np.asarray(probs)
        best = probs.argmax(axis=-2)[..., None, :]  # (..., 1, K)
        return (np.arange(probs.shape[-2])[:, None] == best).astype("float32")

    def latents(self, n: int, seed=None) -> dict:
        """Standard normal latents by name: ``chords``, ``style`` (n, z_dim); ``melody``, ``groove`` (n, K, z_dim)."""
        n = _util.positive_int("n", n)
        # drawn as GAN.generate draws them, so generate_from(latents(n, seed)) == generate(n, seed=seed)
        z = ops.convert_to_numpy(keras.random.normal((n, self.latent_dim),
                                                     seed=seed if seed is not None else self.seed_generator))
        parts = z.reshape(n, 2 + 2 * self.num_tracks, self.z_dim)
        K = self.num_tracks
        return {"chords": parts[:, 0], "style": parts[:, 1], "melody": parts[:, 2:2 + K], "groove": parts[:, 2 + K:]}

    def generate_from(self, latents: dict, batch_size: int = 256) -> np.ndarray:
        """One-hot rolls (n, bars, steps, pitches, K) from named latents (as ``latents`` returns them)."""
        parts = [latents["chords"][:, None], latents["style"][:, None], latents["melody"], latents["groove"]]
        z = np.concatenate(parts, axis=1).reshape(len(latents["chords"]), -1).astype("float32")
        out = [ops.convert_to_numpy(self.generator(z[i: i + batch_size], training=False))
               for i in range(0, len(z), batch_size)]
        return self.one_hot(np.concatenate(out))

    def generate(self, n: int, *, seed=None, batch_size: int = 256, progress=None) -> np.ndarray:
        """``n`` one-hot piano rolls (n, bars, steps, pitches, K), float32 in {0, 1}: the data's convention.

        Each (bar, step, track) holds its most likely pitch. ``seed``: the same seed gives the
        same rolls; ``progress``: a progress bar (None: quiet under ``smoke``).
        """
        return self.one_hot(super().generate(n, seed=seed, batch_size=batch_size, progress=progress))
