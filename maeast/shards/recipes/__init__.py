"""Corpus recipes: each reads one layout as distributed and lists its clips (see base.Scan)."""

from maeast.shards.recipes.base import RECIPES, Item, Scan, make_key, recipe, run_recipe  # noqa: F401
from maeast.shards.recipes import folder, librispeech, tsv  # noqa: F401,E402  (registration)
from maeast.shards.recipes import audioset, esc50, iemocap, speechcommands, voxceleb1  # noqa: F401,E402
