"""What one loader worker runs: its share of the epoch as dicts, from its own plan or a re-dealt rest.

A worker of a normal epoch walks its slot's plan (stream.planned_batches) and decodes its batches
from where the caller stopped up to its quota. A worker given a re-dealt rest of an epoch
(maeast.loaders.elastic) yields instead the listed batches of another layout's plans
(`redealt_batches`), each cropped with the seeds of the slot that planned it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import torch

from maeast.errors import MaeastError
from maeast.loaders.baddata import Errors
from maeast.loaders.stream import Plan, Reader, Sample, materialize, planned_batches


def redealt_batches(plan: Plan, worker: int, errors: Errors, start: int,
                    read: Reader | None = None) -> Iterator[tuple[Plan, int, int, list[Sample]]]:
    """The worker's items of a re-dealt rest, (old slot, position) each, as (old plan, old worker, position,
    samples): every old slot's plan walked once, without decoding, as a resumed worker walks its own.
    Errors count only while reading the batch of an item from `start` on. read: as planned_batches'."""
    n, w = int(plan.rest["world_size"]), int(plan.rest["num_workers"])
    config = dataclasses.replace(plan.config, num_workers=w)
    walks: dict[int, list] = {}  # old slot -> [its plan, the position of its last batch read, its batches]
    for index, (slot, position) in enumerate(plan.rest["items"][worker]):
        if slot not in walks:
            old = dataclasses.replace(plan, config=config, rank=slot // max(w, 1), world_size=n, rest=None)
            walks[slot] = [old, -1, planned_batches(old, slot % max(w, 1), errors, read)]
        walk = walks[slot]
        if position <= walk[1]:
            raise MaeastError(f"re-dealt items of slot {slot} out of order ({position} after {walk[1]}); "
                              f"resume from the checkpoint again")
        errors.live = False
        for _ in range(position - walk[1] - 1):
            next(walk[2])
        errors.live = index >= start
        samples = next(walk[2])
        walk[1] = position
        yield walk[0], slot % max(w, 1), position, samples


def spare_batch(plan: Plan, origin: Plan, worker: int, position: int, errors: Errors):
    """In place of a re-dealt batch that did not decode: the batch that the rest's length of its old slot lies
    further in that slot's stream (no other item of the rest names it; a normal epoch, too, reads past its
    quota for a bad batch), decoded; None if it does not decode either."""
    spare = position + int(plan.rest["left"][origin.rank * origin.workers + worker])
    errors.live = False
    samples = next(itertools.islice(planned_batches(origin, worker, errors), spare, None))
    errors.live = True
    return materialize(samples, origin, worker, spare, errors)


class StreamDataset(torch.utils.data.IterableDataset):
    """Yields one worker's share of the epoch as dicts (worker, position, batch tensors, stats)."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        plan = self.plan
        worker = ((info.id if info is not None else 0) + plan.first_worker) % plan.workers  # a resume's round-robin
        if info is not None:
            torch.set_num_threads(plan.config.threads_per_worker)
        done, start, quota = plan.batches[worker], plan.positions[worker], plan.quotas[worker]
        if done >= quota:
            return
        errors = Errors(plan.config.on_error, live=start == 0)
        if plan.rest is None:
            planned = ((plan, worker, position, samples)
                       for position, samples in enumerate(planned_batches(plan, worker, errors)))
        else:  # the listed batches of other slots' plans, cropped with their seeds
            planned = redealt_batches(plan, worker, errors, start)
        for position, (origin, origin_worker, origin_position, samples) in enumerate(planned):
            if position < start:
                continue
            errors.live = True
            batch = materialize(samples, origin, origin_worker, origin_position, errors)
            if batch is None and plan.rest is not None:  # the ranks of a re-dealt rest stay in step
                batch = spare_batch(plan, origin, origin_worker, origin_position, errors)
            if batch is None:
                continue
            done += 1
            yield {"worker": worker, "position": position, "features": batch.features,
                   "padding_mask": batch.padding_mask, "labels": batch.labels, "keys": batch.keys,
                   "waveform": batch.waveform, "lengths": batch.lengths, "stats": dict(errors.stats)}
            if done >= quota:
                return
