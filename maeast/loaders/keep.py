"""Keep: which clips of a split a loader reads (a fold's training clips, a carved valid or test part).

    keep = Keep.of({"shard-000000.tar": ["a", "b"], "shard-000001.tar": ["c"]}, lambda key: key != "b")
    loader = StreamingLoader(config, rank, world_size, features, keep=keep)

The rule is applied where a worker plans its stream (stream.planned_batches), on each sample's key
before the class-weight repeat, the shuffle buffer and the bucketing, so a clip it leaves out is
never decoded and every batch holds batch_size kept clips. Its per-shard counts stand in for
index.json's in sources.quotas, so every rank yields the same number of batches and a pass reads
every kept clip once. It is built in the main process from the split's sample keys (read once from
their JSON, maeast.finetune.data.scan) and pickled into every worker with the Plan; it is not part of
LoaderConfig (which is saved with the run), so a resumed run passes it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from maeast.errors import MaeastError


@dataclass(frozen=True)
class Keep:
    """The kept sample keys of one split, and per shard (its name in index.json) how many of them it holds."""

    keys: frozenset[str]
    counts: Mapping[str, int]

    @classmethod
    def of(cls, shard_keys: Mapping[str, Iterable[str]], keeps: Callable[[str], bool]) -> "Keep":
        """From every shard's sample keys (shard name -> keys) and a rule on a key."""
        kept = {name: [key for key in keys if keeps(key)] for name, keys in shard_keys.items()}
        return cls(frozenset(key for keys in kept.values() for key in keys),
                   {name: len(keys) for name, keys in kept.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def count(self, shard) -> int:
        """Kept clips of a shard (sources.Shard)."""
        return self.counts[shard.name]

    def check(self, sources) -> None:
        """A keep-rule names the shards of the one folder it was built on (sources.Source list)."""
        if len(sources) != 1:
            raise MaeastError(f"loader: a keep-rule selects clips of one shard folder, this loader reads "
                              f"{len(sources)}; give one folder")
        names = {s.name for s in sources[0].shards}
        if names != set(self.counts):
            other = sorted(names ^ set(self.counts))[0]
            raise MaeastError(f"loader: the keep-rule was built for other shards than {sources[0].dir} split "
                              f"{sources[0].split!r} (shard {other} is in only one of them); build it from this "
                              f"folder's split")
