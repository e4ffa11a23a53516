"""Music as data: Bach chorales as note lists, a time grid, event tokens and a multi-track roll.

Chapter 14 (chapters/14_music.ipynb). Its other modules: ``genlib.midi`` (MIDI files and a
synthesiser), ``genlib.music_metrics`` (musical statistics, plagiarism check, n-gram baselines,
bits per token) and ``genlib.musegan`` (the multi-track GAN).

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
* ``load_chorales``: the Bach chorales that ship inside the ``music21`` package, read with a
  small MusicXML reader (``read_musicxml``) and cached as arrays; ``split``, ``transpose``
  and ``augment`` (transpositions that keep every voice in its range).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from genlib import _util

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


def sounding_pitches(notes, length: int | None = None) -> np.ndarray:
    """Int array (T, 4): the pitch each voice sounds at each step, -1 where it is silent."""
    grid = notes_to_grid(notes, length)
    return np.stack([_sounding_pitch(row) for row in grid], axis=1)


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
