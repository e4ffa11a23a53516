"""Hearing note lists: a Standard MIDI File writer and reader, and a small additive synthesiser.

Chapter 14 (chapters/14_music.ipynb); note lists are ``genlib.music``'s (N, 4) arrays.
MIDI is written and read with NumPy and ``struct`` alone, so nothing beyond the wheel is needed.
"""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np

from genlib import _util
from genlib.music import STEPS_PER_QUARTER, VOICES, check_notes, length_in_steps

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
