"""The storage rows of benchmarks/loader.py: one shard folder read from local disk, loopback S3 (moto)
and loopback HTTP (http.server with ranges), by maeast's streaming loader and, side by side on the same
objects, by webdataset's own WebDataset pipeline with the same decode and fbank.

The servers are those the test suite runs too (benchmarks/servers.py): moto in server mode as a
subprocess with dummy credentials, and a threaded http.server answering Range requests, both on 127.0.0.1 only.
maeast reads s3:// through s3fs (maeast.shards.storage); webdataset has no s3:// opener of its own and
reads http(s) with curl (its gopen), so it gets the same S3 objects as presigned http URLs and the
same HTTP URLs. The peer pipeline (WebDataset -> shuffle -> decode -> batched -> WebLoader) decodes with
maeast's decode_window and featurizes with lengths.make_batch, exactly as maeast's loader does, so the
rows compare reading, parsing, checking and batching. maeast also checks each sample's sha256
(format 2); webdataset checks nothing.
"""

from __future__ import annotations

import functools
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from servers import ACCESS_KEY, SECRET, moto_server, s3_env, serve_folder

from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.loaders.lengths import make_batch
from maeast.loaders.stream import Errors, Sample, decode_window
from maeast.shards import storage
from maeast.shards.format import audio_part, iter_tar, read_index, shard_paths

BUCKET = "maeast-bench"


@dataclass
class Places:
    """Where the same shards are: per place, the folder maeast is given and the URLs webdataset opens."""

    folders: dict[str, str]
    peer_urls: dict[str, list[str]]


@contextmanager
def served(shards: Path, split: str = "train"):
    """The shard folder on local disk, in a moto bucket and behind http.server, for the duration; the
    S3 environment (endpoint, dummy credentials) is set for this process and its loader workers."""
    names = [p.name for p in shard_paths(shards, split)]
    with moto_server() as endpoint, serve_folder(shards.parent) as base:
        saved = {k: os.environ.get(k) for k in s3_env(endpoint)}
        try:
            os.environ.update(s3_env(endpoint))
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key=SECRET, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            for path in sorted(shards.iterdir()):
                if path.is_file():
                    client.upload_file(str(path), BUCKET, f"{shards.name}/{path.name}")
            presigned = [client.generate_presigned_url("get_object", ExpiresIn=24 * 3600,
                                                       Params={"Bucket": BUCKET, "Key": f"{shards.name}/{n}"})
                         for n in names]
            yield Places(folders={"local": str(shards), "s3": f"s3://{BUCKET}/{shards.name}",
                                  "http": f"{base}/{shards.name}"},
                         peer_urls={"local": [str(shards / n) for n in names], "s3": presigned,
                                    "http": [f"{base}/{shards.name}/{n}" for n in names]})
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _decode(sample: dict, clip_samples: int, sample_rate: int) -> tuple[str, torch.Tensor, list[int]] | None:
    """A webdataset sample dict -> (key, the clip's first clip_samples samples, label ids), decoded by
    maeast's decode_window (FLAC or wav, only the window)."""
    parts = {k: v for k, v in sample.items() if not k.startswith("__")}
    codec, audio = audio_part(parts)
    meta = json.loads(parts["json"])
    kept = min(int(meta["num_samples"]), clip_samples)
    wave = decode_window(Sample(sample["__key__"], audio, meta, codec), 0, kept, sample_rate, Errors("skip"))
    return None if wave is None else (sample["__key__"], wave, meta.get("label_ids", []))


def _collate(items: list, clip_samples: int, sample_rate: int, num_classes: int, multi_label: bool, fbank: str):
    """Clips -> the Batch maeast's loader makes of them (zero-padded to clip_samples, the same fbank)."""
    wave = torch.zeros(len(items), clip_samples)  # [B, N]
    for i, (_, w, _) in enumerate(items):
        wave[i, : len(w)] = w
    kept = torch.tensor([len(w) for _, w, _ in items])  # [B]
    return make_batch(wave, kept, [k for k, _, _ in items], [ids for _, _, ids in items], preset=fbank,
                      sample_rate=sample_rate, num_classes=num_classes, multi_label=multi_label)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


class WebDatasetPeer:
    """webdataset's own pipeline over a list of shard URLs, yielding maeast Batches, one pass an epoch."""

    def __init__(self, urls: list[str], index: dict, config: dict):
        """config: the LoaderConfig fields the maeast rows get (fine-tuning: clip_seconds, batch_size,
        shuffle_buffer, num_workers, fbank; one torch thread a worker)."""
        rate = index["sample_rate"]
        clip_samples = round(config["clip_seconds"] * rate)
        dataset = (wds.WebDataset(urls, shardshuffle=False, empty_check=False)
                   .shuffle(config["shuffle_buffer"])
                   .map(functools.partial(_decode, clip_samples=clip_samples, sample_rate=rate))
                   .select(lambda item: item is not None)
                   .batched(config["batch_size"], partial=True,
                            collation_fn=functools.partial(_collate, clip_samples=clip_samples, sample_rate=rate,
                                                           num_classes=len(index["labels"]),
                                                           multi_label=index["multi_label"], fbank=config["fbank"])))
        self.loader = wds.WebLoader(dataset, batch_size=None, num_workers=config["num_workers"],
                                    worker_init_fn=_one_thread)

    def __iter__(self):
        return iter(self.loader)


def loaders(places: Places, config: dict) -> tuple[dict, dict]:
    """{row name: loader} and {row name: note} for maeast and webdataset at every place."""
    index = read_index(places.folders["local"])
    made, notes = {}, {}
    for place, folder in places.folders.items():
        made[f"(e) stream, {place}"] = StreamingLoader(LoaderConfig(shards=[folder], **config))
        notes[f"(e) stream, {place}"] = {"local": "FLAC shards on disk; sha256 per sample",
                                         "s3": "s3fs, moto on 127.0.0.1",
                                         "http": "ranged GETs, http.server"}[place]
    for place, urls in places.peer_urls.items():
        made[f"(f) webdataset, {place}"] = WebDatasetPeer(urls, index, config)
        notes[f"(f) webdataset, {place}"] = {"local": "tar paths; same decode, fbank",
                                             "s3": "presigned URLs, curl",
                                             "http": "curl (webdataset's gopen)"}[place]
    return made, notes


def first_sample(url: str, size: int, first_chunk: int) -> float:
    """Seconds from opening a remote shard to its first whole sample, with a first ranged read of
    first_chunk bytes (storage.FIRST_CHUNK; storage.CHUNK is how every read went before)."""
    saved = storage.FIRST_CHUNK
    storage.FIRST_CHUNK = first_chunk
    try:
        start = time.perf_counter()
        samples = iter_tar(url, size=size)
        next(samples)
        seconds = time.perf_counter() - start
        samples.close()
        return seconds
    finally:
        storage.FIRST_CHUNK = saved


def first_sample_cases(places: Places) -> dict:
    """{row name: a call timing the first sample of the first shard} at each remote place, first read
    FIRST_CHUNK (now) and CHUNK (before)."""
    shard = shard_paths(places.folders["local"], "train")[0]
    size = shard.stat().st_size
    cases = {}
    for place in ("s3", "http"):
        url = f"{places.folders[place]}/{shard.name}"
        for label, first in (("first read FIRST_CHUNK", storage.FIRST_CHUNK), ("first read CHUNK", storage.CHUNK)):
            cases[f"{place}, {label} ({first >> 10} KB)"] = functools.partial(first_sample, url, size, first)
    return cases
