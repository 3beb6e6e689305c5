"""Demo corpora made by real synthesizers, in the official layouts of well-known corpora.

    build_demo(out, size="small", seed=0) -> summary dict
    out/speech_commands   keyword spotting (Speech Commands layout), espeak-ng voices + sox noise
    out/esc50             sound events (ESC-50 layout), General MIDI instruments via fluidsynth
    out/librispeech       unlabelled speech and music (LibriSpeech layout) for pretraining
"""

from maeast.demo.build import CORPORA, SIZES, build_demo

__all__ = ["CORPORA", "SIZES", "build_demo"]
