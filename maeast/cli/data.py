"""`maeast data ...`: demo corpora made by real synthesizers."""

from maeast.cli.common import new_app

app = new_app("Make data: demo corpora from real synthesizers (espeak-ng, fluidsynth, sox).")
