"""Thin wrappers over the synthesizers (espeak-ng, sox, fluidsynth) and a small MIDI file writer.

Every function here is deterministic: the same arguments give the same samples. The tools run as
subprocesses with fixed settings (sox in repeatable mode `-R`, fluidsynth rendering float samples,
so no dither noise), and results come back as float32 numpy arrays in [-1, 1].
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from maeast.errors import MaeastError

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# Highest sounding key of the FluidR3_GM melodic presets that stop below key 108 (measured by
# rendering every key of every program 0-95; all sound from key 21 up, violin (40) skips 94).
HIGHEST_KEY = {19: 96, 22: 96, 26: 96, 28: 84, 31: 85, 33: 84, 34: 84, 35: 84, 36: 84, 37: 84,
               39: 96, 40: 93, 41: 96, 43: 57, 44: 97, 45: 96, 48: 97, 49: 98, 52: 96, 53: 96,
               55: 96, 57: 96, 58: 72, 59: 96, 60: 96, 61: 96, 64: 96, 65: 84, 67: 72, 68: 96,
               69: 85, 70: 84, 74: 97}
APT_PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox", "fluidsynth": "fluidsynth"}


def require(tool: str) -> str:
    """The path of a synthesizer program, or a one-line MaeastError naming its apt package."""
    path = shutil.which(tool)
    if path is None:
        raise MaeastError(f"{tool} is not installed (needed for the demo corpora): "
                          f"install it with `apt-get install {APT_PACKAGES[tool]}`")
    return path


def require_soundfont(path: Path | None = None) -> Path:
    """The General MIDI soundfont (SOUNDFONT unless given), or a MaeastError naming its package."""
    path = Path(path if path is not None else SOUNDFONT)
    if not path.is_file():
        raise MaeastError(f"General MIDI soundfont {path} not found (needed for the demo "
                          f"corpora): install it with `apt-get install fluid-soundfont-gm`")
    return path


def check_tools() -> None:
    """Fail fast, before any work, if a synthesizer or the soundfont is missing."""
    for tool in APT_PACKAGES:
        require(tool)
    require_soundfont()


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise MaeastError(f"{Path(cmd[0]).name} failed ({' '.join(cmd[1:6])} ...): "
                          f"{err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """[N] float32 at sr_in -> [M] float32 at sr_out (soxr, high quality)."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def trim(x: np.ndarray, floor_db: float = -40.0, pad: int = 320) -> np.ndarray:
    """Cut leading and trailing silence (below floor_db of the peak), keeping `pad` samples."""
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max(initial=0.0) * 10 ** (floor_db / 20))
    if len(loud) == 0:
        return x[:0]
    return x[max(0, loud[0] - pad): loud[-1] + pad]


# ----------------------------------------------------------------------------------------------
# espeak-ng and sox


def espeak(text: str, voice: str = "en-us", pitch: int = 50, speed: int = 175,
           sample_rate: int = 16000, effects: tuple[str, ...] = ()) -> np.ndarray:
    """Speak `text` with an espeak-ng voice such as "en-gb-scotland+m3" -> [N] float32.

    pitch is espeak's 0-99 (50 normal), speed words per minute (80-450). `effects` are sox
    effect words (e.g. ("highpass", "200", "reverb", "30")) applied after resampling.
    """
    wav = _run([require("espeak-ng"), "-v", voice, "-p", str(pitch), "-s", str(speed),
                "--stdout", text])
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    x = resample(x, sr, sample_rate)
    return sox_effects(x, sample_rate, effects) if effects else x


def _raw_args(sample_rate: int, channels: int = 1) -> list[str]:
    return ["-t", "raw", "-r", str(sample_rate), "-e", "floating-point", "-b", "32",
            "-c", str(channels)]


def sox_effects(x: np.ndarray, sample_rate: int, effects: tuple[str, ...]) -> np.ndarray:
    """Pass [N] float32 through a chain of sox effects -> [M] float32 (M may differ: reverb)."""
    raw = _run([require("sox"), "-R", "-V1", *_raw_args(sample_rate), "-",
                *_raw_args(sample_rate), "-", *effects], stdin=np.ascontiguousarray(x, "<f4").tobytes())
    return np.frombuffer(raw, dtype="<f4").copy()


def sox_synth(seconds: float, sample_rate: int, generators: tuple[str, ...],
              effects: tuple[str, ...] = ()) -> np.ndarray:
    """sox's `synth` generators (e.g. ("pinknoise",) or ("sine", "110", "brownnoise")), one
    channel each, then `effects` -> [C, N] float32."""
    channels = sum(g.isalpha() for g in generators)
    raw = _run([require("sox"), "-R", "-V1", "-n", *_raw_args(sample_rate, channels), "-",
                "synth", f"{seconds:.4f}", *generators, *effects])
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels).T.copy()


# ----------------------------------------------------------------------------------------------
# Standard MIDI files (format 0, one track, 1 tick = 1 ms) and fluidsynth

TICKS_PER_QUARTER = 500  # with the tempo below (500000 us per quarter), 1 tick = 1 ms
DRUM_CHANNEL = 9


@dataclass(frozen=True, order=True)
class MidiEvent:
    """A channel message at a time; `rank` orders events at the same tick: resets (-1), controls
    and programs (0), note-offs (1), note-ons (2)."""
    ms: int
    rank: int
    data: bytes


def note(channel: int, start: float, seconds: float, key: int, velocity: int) -> list[MidiEvent]:
    """A note from `start` for `seconds` (both in seconds) -> its note-on and note-off."""
    on = int(round(start * 1000))
    off = max(on + 1, int(round((start + seconds) * 1000)))
    key, velocity = int(np.clip(key, 0, 127)), int(np.clip(velocity, 1, 127))
    return [MidiEvent(on, 2, bytes([0x90 | channel, key, velocity])),
            MidiEvent(off, 1, bytes([0x80 | channel, key, 0]))]


def program(channel: int, start: float, number: int, bank: int = 0) -> list[MidiEvent]:
    """Select a bank and program (the drum channel takes a kit number with bank 128)."""
    ms = int(round(start * 1000))
    return [MidiEvent(ms, 0, bytes([0xB0 | channel, 0, bank & 0x7F])),
            MidiEvent(ms, 0, bytes([0xC0 | channel, number]))]


def control(channel: int, start: float, number: int, value: int) -> list[MidiEvent]:
    return [MidiEvent(int(round(start * 1000)), 0, bytes([0xB0 | channel, number, value]))]


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def smf_bytes(events: list[MidiEvent], end: float | None = None) -> bytes:
    """A format-0 Standard MIDI File holding `events`; `end` (seconds) places the end of track."""
    track, now = bytearray(), 0
    track += _vlq(0) + b"\xff\x51\x03" + (500000).to_bytes(3, "big")  # tempo: 120 bpm
    for ev in sorted(events):
        track += _vlq(ev.ms - now) + ev.data
        now = ev.ms
    last = max(now, int(round(end * 1000))) if end is not None else now
    track += _vlq(last - now) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def fluidsynth(midi: bytes, sample_rate: int = 44100, gain: float = 0.3,
               soundfont: Path | None = None) -> np.ndarray:
    """Render a MIDI file with fluidsynth (reverb and chorus on, as shipped) -> [N] float32 mono."""
    exe, sf2 = require("fluidsynth"), require_soundfont(soundfont)
    with tempfile.TemporaryDirectory(prefix="maeast-midi-") as tmp:
        mid, raw = Path(tmp) / "in.mid", Path(tmp) / "out.raw"
        mid.write_bytes(midi)
        _run([exe, "-n", "-i", "-q", "-g", str(gain), "-r", str(sample_rate), "-T", "raw",
              "-O", "float", "-E", "little", "-o", "synth.cpu-cores=1", "-F", str(raw),
              str(sf2), str(mid)])
        stereo = np.fromfile(raw, dtype="<f4").reshape(-1, 2)  # [N, 2] interleaved
    return stereo.mean(axis=1).astype(np.float32)


def render_clips(clips: list[tuple[list[MidiEvent], float]], sample_rate: int = 44100,
                 gap: float = 2.0, gain: float = 0.3) -> list[np.ndarray]:
    """Render many short MIDI clips in one fluidsynth run (loading the soundfont once).

    Each clip (events with times from 0, length in seconds) gets its own slot: controllers reset
    at the start, all sound off at the end, then `gap` seconds for reverb to die away before the
    next slot. Returns one [round(length * sample_rate)] float32 array per clip.
    """
    events: list[MidiEvent] = []
    starts, t = [], 0.0
    for clip_events, seconds in clips:
        start_ms = int(round(t * 1000))
        starts.append(start_ms)
        events += [MidiEvent(start_ms, -1, bytes([0xB0 | ch, 121, 0])) for ch in range(16)]
        events += [MidiEvent(e.ms + start_ms, e.rank, e.data) for e in clip_events]
        end = (start_ms + int(round(seconds * 1000))) / 1000
        for ch in range(16):
            events += control(ch, end, 120, 0) + control(ch, end, 123, 0)  # sound off, notes off
        t = end + gap
    audio = fluidsynth(smf_bytes(events, end=t), sample_rate, gain)
    out = []
    for start_ms, (_, seconds) in zip(starts, clips):
        a, n = start_ms * sample_rate // 1000, int(round(seconds * sample_rate))
        seg = audio[a:a + n]
        out.append(np.pad(seg, (0, n - len(seg))))
    return out
