"""espeak-ng voice settings: a "speaker" of the demo corpora is one drawn setting.

A setting is an accent (espeak-ng language voice, some of them non-native English accents), a
variant (m1-m7, f1-f5, klatt, whisper, croak, ...), a base pitch and speed, and a recording
channel (microphone band limits and room reverb, applied with sox). Takes of one speaker jitter
pitch and speed a little around the speaker's base, as a person does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (espeak-ng voice, weight): native accents first, then English read with other languages' rules.
ACCENTS = (("en-us", 4.0), ("en", 3.0), ("en-gb-scotland", 1.0), ("en-gb-x-rp", 1.0),
           ("en-gb-x-gbclan", 1.0), ("en-gb-x-gbcwmd", 1.0), ("en-029", 1.0), ("en-us-nyc", 1.0),
           ("de", 0.4), ("nl", 0.4), ("sv", 0.4), ("es", 0.4), ("it", 0.4), ("pl", 0.4))
# espeak-ng variants (files under espeak-ng-data/voices/!v), with weights.
VARIANTS = (tuple((f"m{i}", 1.0) for i in range(1, 8)) + tuple((f"f{i}", 1.2) for i in range(1, 6))
            + (("klatt", 0.6), ("klatt2", 0.6), ("klatt3", 0.6), ("klatt4", 0.6),
               ("whisper", 0.5), ("whisperf", 0.5), ("croak", 0.6), ("Andy", 0.4),
               ("Annie", 0.4), ("Alicia", 0.4), ("Denis", 0.4), ("Gene", 0.4), ("Lee", 0.4),
               ("Tweaky", 0.3), ("adam", 0.4), ("anika", 0.4), ("aunty", 0.4), ("boris", 0.4),
               ("david", 0.4), ("ed", 0.4), ("grandma", 0.4), ("grandpa", 0.4), ("linda", 0.4),
               ("max", 0.4), ("michel", 0.4), ("norbert", 0.4), ("quincy", 0.4), ("rob", 0.4),
               ("steph", 0.4), ("travis", 0.4), ("victor", 0.4)))


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak-ng voice setting and its recording channel."""
    voice: str                 # espeak-ng "-v" argument, accent+variant, e.g. "en-gb-scotland+f3"
    pitch: int                 # espeak-ng base pitch 0-99 (50 = the voice's default)
    speed: int                 # words per minute
    highpass: int              # microphone low cut (Hz)
    lowpass: int               # microphone high cut (Hz); 0 = none
    reverb: int                # sox reverberance 0-100 (0 = dry)

    def effects(self) -> tuple[str, ...]:
        """sox effects for this speaker's channel (gain first so that reverb cannot clip)."""
        fx = ["gain", "-6", "highpass", str(self.highpass)]
        if self.lowpass:
            fx += ["lowpass", str(self.lowpass)]
        if self.reverb:
            fx += ["reverb", str(self.reverb), "50", str(30 + self.reverb // 2)]
        return tuple(fx)

    def take(self, rng: random.Random, pitch_jitter: int = 6, speed_jitter: float = 0.12
             ) -> tuple[int, int]:
        """(pitch, speed) of one take: the speaker's base, jittered."""
        pitch = min(99, max(0, self.pitch + rng.randint(-pitch_jitter, pitch_jitter)))
        speed = int(self.speed * (1 + rng.uniform(-speed_jitter, speed_jitter)))
        return pitch, max(80, speed)


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([name for name, _ in table], weights=[w for _, w in table])[0]


def draw_voice(rng: random.Random, speed: tuple[int, int] = (110, 220)) -> Voice:
    """A random speaker: accent x variant x pitch x speed x channel."""
    accent, variant = _weighted(rng, ACCENTS), _weighted(rng, VARIANTS)
    return Voice(voice=f"{accent}+{variant}",
                 pitch=rng.randint(10, 90),
                 speed=rng.randint(*speed),
                 highpass=rng.choice((40, 80, 120, 200, 300)),
                 lowpass=rng.choice((0, 0, 7000, 5000, 3800)),
                 reverb=rng.choice((0, 0, 15, 30, 50)))
