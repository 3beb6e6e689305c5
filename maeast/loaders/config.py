"""The loader's configs, one inside the next: every field is checked in __post_init__, so that a bad value is a
one-line MaeastError before any worker starts.

    StreamConfig   how workers read shards (backend, workers, threads, prefetch, pinning, checksums, bad data,
                   the cache of remote shards): what every recipe's data section embeds
    BatchConfig    + which clips (shards, weights, split) and how they batch: pretraining's data section
    LoaderConfig   + mode (pretrain or finetune) and fine-tuning's clip options: what a loader takes
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from maeast.errors import MaeastError
from maeast.shards.storage import is_url, redact

MODES = ("pretrain", "finetune")
BACKENDS = ("stream", "dali", "ffcv")
ON_ERROR = ("skip", "fail")
FBANK_ON = ("loader", "device")


@dataclass
class StreamConfig:
    """How a loader's workers read shards: the part of the data section every recipe shares (pretraining's
    `data`, fine-tuning's `data`), so that each gets the workers, prefetch, pinning, checks, bad-data rule
    and the local cache of remote shards alike."""

    num_workers: int = 2
    """Worker processes per rank (0 reads in the calling process)."""
    threads_per_worker: int = 1
    """torch intra-op threads in each worker (fbank); DALI's CPU threads for backend "dali"."""
    prefetch: int = 2
    """Batches each worker prepares ahead (DataLoader's prefetch_factor)."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (only useful with a CUDA device)."""
    verify_checksums: bool = True
    """Check the data against its checksums: in format-2 folders each sample's members as they are read
    (no extra read); in format-1 folders (built before per-member checksums) the whole shard against
    index.json before reading it (one extra read)."""
    on_error: str = "skip"
    """Bad data (a sample whose member differs from its checksum, a truncated tar, an undecodable
    sample, a remote shard unreachable after retries): "skip" logs one line naming shard and key and
    counts it in stats, "fail" raises a MaeastError naming it."""
    cache_dir: str | None = None
    """A local folder keeping copies of remote shards, so later epochs read local disk (None: no cache).
    Entries are written atomically, checked on use (a corrupt one is fetched again), and evicted least
    recently used first beyond cache_gb. Safe to share between ranks and runs on one machine."""
    cache_gb: float = 100.0
    """The most the cache_dir may hold, in GB (1e9 bytes)."""
    backend: str = "stream"
    """"stream" (webdataset on CPU worker processes); "dali" (the `dali` extra: DALI's webdataset reader,
    decoder and crop on its own threads, num_workers x threads_per_worker, then the same fbank on the
    device; local shards with .idx files; bad samples are skipped before the pipeline (checksums) or once
    DALI fails on them (undecodable), each named in one line; resumes
    exactly through DALI's checkpoint on the same number of processes, at the next epoch on another; no
    mixing weights, length bucketing (pretraining: bucket_batches 1), class_weights or whole clips);
    "ffcv" (the `ffcv` extra, fine-tuning only: the split's fbanks precomputed once into a .beton, cropped
    from each clip's start, refreshed when the shards, fbank or clip length change)."""

    def __post_init__(self):
        _at_least("num_workers", self.num_workers, 0)
        _at_least("threads_per_worker", self.threads_per_worker, 1)
        _at_least("prefetch", self.prefetch, 1)
        _choice("on_error", self.on_error, ON_ERROR)
        _choice("backend", self.backend, BACKENDS)
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        if not self.cache_gb > 0:
            raise MaeastError(f"loader: cache_gb {self.cache_gb} must be positive")

    def stream_fields(self) -> dict:
        """This section's StreamConfig fields, to hand to a LoaderConfig."""
        return {f.name: getattr(self, f.name) for f in fields(StreamConfig)}


@dataclass
class BatchConfig(StreamConfig):
    """Which clips a pretraining loader reads and how it batches them: pretraining's data section."""

    shards: list[str] = field(default_factory=list)
    """Shard folders written by `maeast shard build` (each with an index.json): local paths or URLs
    (s3://bucket/prefix, gs://..., http(s)://..., file://..., pipe:COMMAND with {} for the file name;
    see maeast.shards.storage), streamed front to back; a LoaderConfig on backend "ffcv" reads one local
    .beton file written by `maeast shard ffcv` (fine-tuning's data.backend ffcv writes it itself)."""
    weights: list[float] | None = None
    """Mixing weight per shard folder (the chance that the next clip comes from it); None mixes in
    proportion to the folders' sample counts, i.e. plain concatenation."""
    split: str = "train"
    """Which split of every folder to read."""
    batch_size: int = 8
    """Clips per batch on each rank."""
    shuffle_buffer: int = 1000
    """Clips held in each worker's shuffle buffer; 0 keeps shard order (evaluation)."""
    bucket_batches: int = 8
    """Pretraining: clips are pooled this many batches at a time and sorted by length, so that
    each batch holds clips of similar length and cropping to the shortest wastes little; 1 is off."""
    seed: int = 0
    """Seed of every random choice (shard order, shuffle buffer, mixing, crop offsets)."""
    max_seconds: float = 10.0
    """Pretraining: the most audio a clip of a batch keeps (longer batches are cropped)."""
    min_seconds: float = 2.0
    """Pretraining: clips shorter than this are skipped (counted in stats["short"])."""
    fbank: str = "mae_ast"
    """Fbank preset of maeast.features (the same for every backend)."""
    epoch_batches: int | None = None
    """Batches per epoch on every rank. None: one pass over each worker's shards, equalized across
    ranks from index.json's sample counts. Streams wrap around (a new shuffled pass) whenever a
    worker runs out early, so every rank always yields exactly this many batches."""
    drop_last: bool = False
    """Drop the short last batch of each worker's pass (default: yield it smaller)."""
    max_tokens: int | None = None
    """Pretraining: fairseq's `dataset.max_tokens` batching instead of batch_size clips per batch. Each clip
    counts min(its samples, size_cap); a batch of a length-sorted pool takes clips while their count times its
    longest clip's stays within max_tokens, cut to a multiple of batch_multiple (lengths.bucket_tokens): the
    official 1400000 gives 5 clips of 15.6 s or more, 8 of 10 s, 40 of 2 s. batch_size must then be the
    clips of a batch at the cap (lengths.batch_clips: 5 for 1400000), the unit optim.global_batch counts
    batches in (global_batch / batch_size batches per step); bucket_batches counts pools in max_tokens.
    An epoch stays the batches of batch_size clips that index.json's clip counts give (sources.quotas), so a
    pass of clips shorter than size_cap (more of them a batch) ends before the epoch and the stream wraps into
    the next pass. None: batch_size clips per batch."""
    size_cap: int = 250_000
    """max_tokens batching: the most samples one clip counts (fairseq's size() = min(samples,
    task.max_sample_size), 250000 in MAE-AST-Public config/pretrain/mae_ast.yaml); its crop is not capped by it."""
    batch_multiple: int = 8
    """max_tokens batching: batches of this many clips or more are cut to a multiple of it (fairseq's
    dataset.required_batch_size_multiple, default 8)."""
    fbank_on: str = "loader"
    """Where the fbank is computed (backend stream, pretraining): "loader" in the workers, which yield
    features; "device" where the batch is used: the workers yield cropped waveforms (with pin_memory, in
    page-locked memory) and `Batch.to(device)` computes the same features there (maeast.features.featurize).
    On a GPU this takes the fbank off the CPU cores: benchmarks/cores_per_gpu.py measures both."""

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        self.shards = [str(s) for s in self.shards]
        if not self.shards:
            raise MaeastError("loader: no shard folders given (loader.shards: [path/to/shards])")
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            if len(self.weights) != len(self.shards):
                raise MaeastError(f"loader: {len(self.weights)} weights for {len(self.shards)} shard folders; "
                                  f"give one weight per folder")
            if any(not w >= 0 for w in self.weights) or sum(self.weights) <= 0:
                raise MaeastError(f"loader: weights {self.weights} must be >= 0 with a positive sum")
        _choice("fbank_on", self.fbank_on, FBANK_ON)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("shuffle_buffer", self.shuffle_buffer, 0)
        _at_least("bucket_batches", self.bucket_batches, 1)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise MaeastError(f"loader: seed {self.seed!r} must be a non-negative integer")
        if not self.max_seconds > 0:
            raise MaeastError(f"loader: max_seconds {self.max_seconds} must be positive")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise MaeastError(f"loader: min_seconds {self.min_seconds} must be in [0, max_seconds={self.max_seconds}]")
        if self.epoch_batches is not None:
            _at_least("epoch_batches", self.epoch_batches, 1)
        _at_least("size_cap", self.size_cap, 1)
        _at_least("batch_multiple", self.batch_multiple, 1)
        if self.max_tokens is not None:
            self._check_max_tokens()
        secret = [s for s in self.shards if is_url(s) and redact(s) != s]
        if secret:
            raise MaeastError(f"loader: shard URL {redact(secret[0])} carries credentials (user:password@ or a query "
                              f"string), which would be saved with the run; give them in the environment "
                              f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS)")
        from maeast.features import get_config
        get_config(self.fbank)  # an unknown preset is a one-line error here, not in a worker

    def _check_max_tokens(self) -> None:
        from maeast.loaders.lengths import batch_clips
        _at_least("max_tokens", self.max_tokens, self.size_cap)
        at_cap = batch_clips(self.max_tokens, self.size_cap, self.batch_multiple)
        if self.batch_size != at_cap:
            raise MaeastError(f"loader: max_tokens {self.max_tokens} batches {at_cap} clips of size_cap "
                              f"{self.size_cap} samples or more, but batch_size is {self.batch_size}; set batch_size: "
                              f"{at_cap} (the clips optim.global_batch counts per batch)")

    def loader(self, **changes) -> "LoaderConfig":
        """The whole loader config of this section (mode pretrain), with `changes`."""
        return LoaderConfig(**{**{f.name: getattr(self, f.name) for f in fields(BatchConfig)}, **changes})


@dataclass
class LoaderConfig(BatchConfig):
    """How to stream batches out of one or more shard folders: BatchConfig's clips and batches, in pretraining
    or fine-tuning mode, on a backend."""

    mode: str = "pretrain"
    """"pretrain": clips of a batch cropped (random offset) to its shortest clip, capped at
    max_seconds, clips under min_seconds skipped, no labels. "finetune": every clip cropped or
    zero-padded to clip_seconds, with a padding mask, and labels."""
    clip_seconds: float | None = None
    """Fine-tuning: every clip is cropped or padded to this length (required in finetune mode)."""
    random_crop: bool = True
    """Fine-tuning: crop clips longer than clip_seconds at a random offset (False: from the start)."""
    pad_to_longest: bool = False
    """Fine-tuning: pad a batch only to its longest clip (clip_seconds then caps it) instead of clip_seconds."""
    class_weights: list[float] | None = None
    """Fine-tuning (stream backend): draw clips class-balanced: a clip of class c is yielded k ~ Poisson(
    class_weights[c]) times per pass, before the shuffle buffer (maeast.finetune.data.class_weights gives
    torch's WeightedRandomSampler's expected draws); None: every clip once."""

    def __post_init__(self):
        super().__post_init__()
        _choice("mode", self.mode, MODES)
        if self.fbank_on == "device" and self.backend != "stream":  # finetune: SSAST's waveform mixup
            raise MaeastError(f"loader: fbank_on device serves the stream backend (this loader: backend "
                              f"{self.backend}); set fbank_on: loader")
        if self.mode == "finetune":
            if self.clip_seconds is None:
                raise MaeastError("loader: finetune mode needs clip_seconds (e.g. 1.0 for keywords, 5.0 for ESC-50)")
            if not self.clip_seconds >= 0.025:
                raise MaeastError(f"loader: clip_seconds {self.clip_seconds} must hold at least one 25 ms frame")
        if self.class_weights is not None and (not self.finetune or any(not w >= 0 for w in self.class_weights)):
            raise MaeastError("loader: class_weights are per-class draws of a fine-tuning loader, each >= 0")
        if self.max_tokens is not None and (self.finetune or self.backend != "stream"):
            raise MaeastError(f"loader: max_tokens batches pretraining on the stream backend (this loader: {self.mode}, "
                              f"backend {self.backend}); set max_tokens: null")
        remote = [s for s in self.shards if is_url(s)]
        if remote and self.backend != "stream":
            raise MaeastError(f"loader: backend {self.backend} reads local files only, not {redact(remote[0])}; use "
                              f"backend stream for URLs (or copy the shards to local disk)")
        _refuse(self)
        if self.backend == "ffcv" and len(self.shards) != 1:
            raise MaeastError("loader: backend ffcv reads exactly one .beton file (loader.shards: [file.beton])")

    @property
    def finetune(self) -> bool:
        return self.mode == "finetune"


def _refuse(c: LoaderConfig) -> None:
    """What backend dali or ffcv cannot do, refused in one line before any work."""
    if c.backend == "dali":
        if c.weights is not None and len(c.shards) > 1:
            raise MaeastError("loader: backend dali concatenates shard folders; mixing weights need backend stream")
        if c.mode == "pretrain" and c.bucket_batches > 1:
            raise MaeastError(f"loader: backend dali does not bucket clips by length (bucket_batches "
                              f"{c.bucket_batches}); set bucket_batches: 1, or use backend stream")
        if c.class_weights is not None:
            raise MaeastError("loader: backend dali draws every clip once; class_weights need backend stream")
        if c.pad_to_longest:
            raise MaeastError("loader: backend dali pads every clip to clip_seconds; a task without a crop "
                              "(pad_to_longest) needs backend stream")
    if c.backend == "ffcv":
        if c.mode == "pretrain":
            raise MaeastError("loader: backend ffcv holds fixed-length precomputed fbanks for fine-tuning; pretraining "
                              "crops a new window of each whole clip every epoch: use backend stream or dali")
        if c.class_weights is not None:
            raise MaeastError("loader: backend ffcv reads every clip once a pass; class_weights need backend stream")
        if c.pad_to_longest:
            raise MaeastError("loader: backend ffcv stores clips padded to clip_seconds; a task without a crop "
                              "(pad_to_longest) needs backend stream or dali")
        if c.epoch_batches is not None:
            raise MaeastError(f"loader: backend ffcv reads one pass of its .beton per epoch; epoch_batches "
                              f"{c.epoch_batches} (fine-tuning: data.epoch_batches or run.eval_steps) needs backend "
                              f"stream or dali")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MaeastError(f"loader: {name} {value!r} unknown; use one of: {', '.join(allowed)}")


def _at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise MaeastError(f"loader: {name} {value!r} must be an integer >= {low}")
