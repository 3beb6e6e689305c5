"""Long noise-like recordings made with sox, for Speech Commands' `_background_noise_/` folder.

The official folder holds about a minute each of white and pink noise, running tap water, doing
the dishes, an exercise bike and a cat. Ours are synthesized: coloured noise, and sox effect
chains that imitate running water, a humming machine and a fan. Each recipe's parameters are drawn
from the seed; sox's own noise generator runs in repeatable mode, so a random lead-in that is cut
off shifts the noise sequence per seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from maeast.demo.synth import sox_synth

SAMPLE_RATE = 16000
KINDS = ("pink_noise", "brown_noise", "running_tap", "machine_hum", "fan")


@dataclass(frozen=True)
class NoiseTask:
    path: str                            # where to write the wav
    kind: str                            # one of KINDS
    seconds: float
    generators: tuple[str, ...]          # sox synth generators, one channel each
    effects: tuple[str, ...]             # sox effects after synth
    mix: tuple[float, ...]               # weight of each channel in the mono mix
    lead_in: float                       # seconds of noise cut off the start (shifts the sequence)
    rms_db: float                        # level of the written file (dBFS)


def noise_task(path: Path, kind: str, seconds: float, rng: random.Random) -> NoiseTask:
    """Draw the recipe of one background-noise recording."""
    u = rng.uniform
    if kind == "pink_noise":
        gens, fx, mix = ("pinknoise",), ("lowpass", str(rng.randint(4000, 7900))), (1.0,)
    elif kind == "brown_noise":
        gens, fx, mix = ("brownnoise",), ("highpass", str(rng.randint(20, 60))), (1.0,)
    elif kind == "running_tap":  # broadband hiss with fast random-like flutter, in a small room
        gens = ("whitenoise", "pinknoise")
        fx = ("band", "-n", str(rng.randint(1800, 3200)), str(rng.randint(1200, 2200)),
              "tremolo", f"{u(6, 13):.2f}", str(rng.randint(25, 50)),
              "tremolo", f"{u(0.2, 0.9):.2f}", str(rng.randint(15, 35)),
              "reverb", str(rng.randint(30, 70)))
        mix = (1.0, u(0.2, 0.6))
    elif kind == "machine_hum":  # mains-like hum with harmonics, rumble and a slow beat
        f0 = rng.choice((50, 60)) * u(0.9, 1.1)
        gens = ("sawtooth", f"{f0:.2f}", "sine", f"{2 * f0:.2f}", "brownnoise", "pinknoise")
        fx = ("lowpass", str(rng.randint(1200, 2600)), "tremolo", f"{u(0.5, 3):.2f}",
              str(rng.randint(10, 40)))
        mix = (0.3, 0.5, 1.0, u(0.05, 0.2))
    elif kind == "fan":  # airflow noise with a blade-pass tone
        gens = ("pinknoise", "brownnoise", "sine", f"{u(80, 240):.2f}")
        fx = ("band", str(rng.randint(300, 900)), str(rng.randint(600, 1500)),
              "tremolo", f"{u(8, 25):.2f}", str(rng.randint(5, 20)))
        mix = (1.0, 0.7, u(0.05, 0.2))
    else:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {KINDS}")
    return NoiseTask(str(path), kind, seconds, gens, fx, mix, round(u(0.0, 5.0), 3),
                     round(u(-32.0, -22.0), 2))


def make_noise(task: NoiseTask) -> list[tuple[str, float]]:
    """Synthesize and write one recording -> [(path, seconds)]."""
    x = sox_synth(task.lead_in + task.seconds, SAMPLE_RATE, task.generators, task.effects)
    x = x[:, int(task.lead_in * SAMPLE_RATE):]                       # [C, N]
    x = x / np.maximum(np.sqrt((x ** 2).mean(axis=1, keepdims=True)), 1e-9)
    y = (np.asarray(task.mix, dtype=np.float32)[:, None] * x).sum(axis=0)  # [N]
    y *= 10 ** (task.rms_db / 20) / max(float(np.sqrt((y ** 2).mean())), 1e-9)
    y = np.clip(y, -1.0, 1.0)
    sf.write(task.path, y, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return [(task.path, len(y) / SAMPLE_RATE)]


README = """\
Background noise for the maeast demo Speech Commands corpus (the official folder holds about a
minute each of noise-like recordings). These were synthesized with sox, not recorded:
pink_noise and brown_noise (coloured noise), running_tap (band-passed hiss with fast flutter and
room reverb), machine_hum (mains hum with harmonics and rumble), fan (airflow noise with a
blade-pass tone). Long files, 16 kHz mono 16-bit, for mixing into clips at random levels.
"""
