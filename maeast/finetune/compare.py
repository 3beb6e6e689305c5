"""What pretraining buys: one encoder against random weights on a set of tasks, in one table.

    rows = run_matrix("runs/pretrain/encoder", [TaskData("esc50", "shards/esc50")], "finetune_small", "runs/cmp")
    console.print(table(rows)); write_json(rows, ...); write_png(rows, ...)  # maeast.finetune.results

For each task three fine-tuning runs (SETTINGS): a head on a frozen randomly initialized encoder
of the checkpoint's own architecture, a head on the frozen pretrained encoder (both by the frozen
protocol, head.frozen: SUPERB's by default; each row's results.json "protocol" is in Row.extra and
the table), and full fine-tuning of the pretrained encoder. Each run lives in OUT/{task}-{setting} (a `maeast finetune`
run folder) beside compare.json: the encoder it started from and the wall time it took. A finished
run whose config and encoder are unchanged is read back, not rerun; a changed one is an error.

Chance is the accuracy of always answering the test clips' most frequent class (per fold, averaged),
read from the test confusion matrices; for mAP it is the mean share of positive clips per class.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from maeast.artifacts import read_encoder
from maeast.configio import load_yaml
from maeast.train.run import config_changes
from maeast.errors import MaeastError
from maeast.files import write_json as write_file
from maeast.finetune.baseline import fbank_baseline
from maeast.finetune.config import FinetuneConfig, build_finetune_config, load_finetune_config
from maeast.finetune.fold import is_finished, part_name
from maeast.finetune.loop import finetune, saved_config
from maeast.finetune.tasks import get_task
from maeast.model.config import PRESETS, ModelConfig
from maeast.shards.format import read_index

ARCHITECTURE = ("n_mels", "patch_time", "patch_freq", "input_norm", "input_scale", "dim", "depth", "heads",
                "ffn_dim", "pre_norm")
"""Encoder fields a random-init baseline must share with the checkpoint."""
FREE_KEYS = ("run.save_every_epochs", "run.keep", "run.log_every", "run.threads")
"""Config keys that do not change a run's result: a finished run that differs only in them is reused."""


@dataclass(frozen=True)
class Setting:
    name: str
    label: str
    frozen: bool
    pretrained: bool


SETTINGS = (Setting("frozen-random", "frozen, random init", True, False),
            Setting("frozen-pretrained", "frozen, pretrained", True, True),
            Setting("full-pretrained", "full, pretrained", False, True))
BASELINE = Setting("fbank-stats", "fbank mean+std", True, False)
"""The hand-made baseline row of each single-label task (maeast.finetune.baseline): no encoder, no fine-tuning run."""


@dataclass(frozen=True)
class TaskData:
    task: str
    shards: str | None = None
    """Shard folder; None: the task's default (shards/{corpus}; custom has none)."""

    @property
    def label(self) -> str:
        """The name of its rows and run folders: the task's, or custom_{folder} for a custom corpus."""
        return f"custom_{Path(self.shards).name}" if get_task(self.task).from_corpus else self.task


@dataclass
class Row:
    """One run of the matrix: a task fine-tuned in one setting."""

    task: str
    setting: str
    metric: str
    mean: float
    std: float
    folds: list[float]
    chance: float | None
    """Accuracy of the majority class (mAP: mean positive share); None where the test split is not known."""
    seconds: float
    run_dir: str
    reused: bool = False
    extra: dict = field(default_factory=dict)


def parse_task(text: str) -> TaskData:
    """"esc50=shards/demo/events", "esc50" or "custom=SHARDS" -> TaskData (the task name checked)."""
    name, _, shards = text.partition("=")
    task = get_task(name.strip())
    if "=" in text and not shards.strip():
        raise MaeastError(f"--task {text!r}: give the shard folder after '=' (e.g. {name}=shards/{name}) or drop '='")
    if task.from_corpus and not shards.strip():
        raise MaeastError(f"--task {text!r}: task {task.name} reads the shard folder given after '=', e.g. "
                          f"--task {task.name}=shards/my_sounds")
    return TaskData(name.strip(), shards.strip() or None)


def encoder_identity(checkpoint: str | Path) -> tuple[dict, ModelConfig]:
    """({"path", "sha256" of the weights, "step"}, its ModelConfig) of an exported encoder."""
    encoder, info = read_encoder(checkpoint)
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    step = (info.get("pretraining") or {}).get("step")
    return {"path": str(checkpoint), "sha256": digest.hexdigest(), "step": step}, encoder.cfg


def random_twin(cfg: ModelConfig, prefer: str | None = None) -> dict:
    """model-section overrides that give a randomly initialized encoder the architecture of `cfg` (the
    preset `prefer` if it fits, e.g. the fine-tuning config's own)."""
    want = {k: getattr(cfg, k) for k in ARCHITECTURE}
    patch = {"patch_time": cfg.patch_time, "patch_freq": cfg.patch_freq}
    for name, fields in sorted(PRESETS.items(), key=lambda item: item[0] != prefer):
        twin = ModelConfig.from_dict({**fields, **patch})
        if {k: getattr(twin, k) for k in ARCHITECTURE} == want:
            return {"preset": name, **patch}
    raise MaeastError(f"no model preset has the checkpoint's encoder ({cfg.depth} layers at {cfg.dim}, {cfg.heads} heads, "
                      f"ffn {cfg.ffn_dim}), so there is no random-init twin to compare with")


def configs(config: str, task: TaskData, out: Path, checkpoint: str, twin: dict,
            overrides: list[str] | None = None) -> dict[str, FinetuneConfig]:
    """The three fine-tuning configs of one task, each with its run folder OUT/{label}-{setting}."""
    made = {}
    for s in SETTINGS:
        extra = list(overrides or [])
        if not s.pretrained:
            extra += [item for k, v in twin.items() for item in (f"--model.{k}", str(v))]
        made[s.name] = load_finetune_config(config, task=task.task, overrides=extra, shards=task.shards,
                                            checkpoint=checkpoint if s.pretrained else None,
                                            freeze_encoder=s.frozen, run_dir=str(out / f"{task.label}-{s.name}"))
    return made


def run_matrix(checkpoint: str | Path, tasks: list[TaskData], config: str = "finetune_small",
               out: str | Path = "runs/compare", overrides: list[str] | None = None, resume: bool = False,
               console=None) -> list[Row]:
    """Fine-tune every task in every setting (finished runs are read back) -> one Row per run."""
    if not tasks:
        raise MaeastError("no task to compare on; give at least one --task TASK=SHARDS")
    labels = [t.label for t in tasks]
    if len(set(labels)) < len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise MaeastError(f"--task {twice} is given twice (its runs would share OUT/{twice}-*); give each once")
    out = Path(out)
    identity, model_cfg = encoder_identity(checkpoint)
    first = tasks[0]
    twin = random_twin(model_cfg, prefer=load_finetune_config(config, task=first.task, shards=first.shards).model.preset)
    planned = [(t, s, c) for t in tasks for s, c in configs(config, t, out, str(checkpoint), twin, overrides).items()]
    for _, setting, cfg in planned:  # every stale run is named before anything trains
        check_reusable(cfg, expected_origin(setting, identity, cfg))
    rows = []
    for task, setting, cfg in planned:
        rows.append(run_one(task, setting, cfg, expected_origin(setting, identity, cfg), resume, console))
        if setting == SETTINGS[-1].name:
            rows += baseline_row(task, cfg, out)
    return rows


def baseline_row(task: TaskData, cfg: FinetuneConfig, out: Path) -> list[Row]:
    """The task's fbank-statistics baseline on its own splits (OUT/{label}-fbank-stats.json; reused while the
    shard folder and its index are the same), as a Row; [] for a multi-label task."""
    path = out / f"{task.label}-{BASELINE.name}.json"
    record = _read(path)
    index = hashlib.sha256(json.dumps(read_index(cfg.shards), sort_keys=True).encode()).hexdigest()
    reused = bool(record) and (record.get("shards"), record.get("index")) == (str(cfg.shards), index)
    if not reused:
        record = {"shards": str(cfg.shards), "index": index,
                  "result": fbank_baseline(cfg.task, str(cfg.shards), cfg.data.clip_seconds)}
        write_file(path, record)
    r = record["result"]
    if r is None:
        return []
    return [Row(task.label, BASELINE.name, r["metric"], r["mean"], r["std"], r["values"], r["chance"], r["seconds"],
                str(path), reused, {"folds": r["folds"], "clips": r["clips"], "protocol": "logistic_regression"})]


def expected_origin(setting: str, identity: dict, cfg: FinetuneConfig) -> dict:
    pretrained = next(s for s in SETTINGS if s.name == setting).pretrained
    return {"encoder": identity if pretrained else {"random": cfg.model.preset, "seed": cfg.run.seed}}


def check_reusable(cfg: FinetuneConfig, origin: dict) -> None:
    """A run folder already there must have the same config and encoder, else nothing is reused."""
    run_dir = cfg.run_dir
    record = _read(run_dir / "compare.json")
    if record and record.get("encoder") != origin["encoder"]:
        raise MaeastError(f"{run_dir} was fine-tuned from another encoder ({record.get('encoder')}); delete that folder "
                          f"(or give another --out) to fine-tune this one")
    if (run_dir / "config.yaml").is_file():
        changed = config_changes(saved_config(run_dir), cfg, FREE_KEYS)
        if changed:
            key, was, now = changed[0]
            raise MaeastError(f"{run_dir} was fine-tuned with {key} = {was!r}, now {now!r}; delete that folder (or "
                              f"give another --out) to rerun it")


def run_one(task: TaskData, setting: str, cfg: FinetuneConfig, origin: dict, resume: bool, console) -> Row:
    """Read a finished run back, or fine-tune (continuing an interrupted run when resume) and read it."""
    run_dir = cfg.run_dir
    if finished(run_dir):
        return collect(run_dir, task.label, setting, reused=True)
    record = _read(run_dir / "compare.json") or {**origin, "seconds": 0.0}
    if console is not None:
        console.rule(f"{task.label}: {next(s.label for s in SETTINGS if s.name == setting)} -> {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_file(run_dir / "compare.json", record)
    started = time.perf_counter()
    try:
        finetune(cfg, resume=resume and (run_dir / "config.yaml").is_file(), console=console)
    finally:
        record["seconds"] += time.perf_counter() - started
        write_file(run_dir / "compare.json", record)
    return collect(run_dir, task.label, setting, reused=False)


def finished(run_dir: Path) -> bool:
    results = _read(run_dir / "results.json")
    return bool(results) and all(is_finished(run_dir / part_name(f["fold"])) for f in results["folds"])


def collect(run_dir: Path, task: str, setting: str, reused: bool) -> Row:
    """A finished run folder -> its Row (test metric per fold, chance, wall time)."""
    results = _read(run_dir / "results.json")
    metric = results["metric"]
    parts = [is_finished(run_dir / part_name(f["fold"])) for f in results["folds"]]
    values = [p["test"][metric] for p in parts]
    seconds = (_read(run_dir / "compare.json") or {}).get("seconds") or results["seconds"]
    return Row(task, setting, metric, results["mean"], results["std"], values, chance_of(parts, metric, run_dir),
               float(seconds), str(run_dir), reused,
               {"folds": [f["fold"] for f in results["folds"]], "clips": sum(p["test"]["clips"] for p in parts),
                "protocol": results.get("protocol") or ("linear_probe" if results["frozen"] else "full")})


def chance_of(parts: list[dict], metric: str, run_dir: Path) -> float | None:
    """Majority-class share of each fold's test clips (averaged); for mAP the mean positive share per class."""
    if metric == "accuracy":
        shares = []
        for part in parts:
            counts = [sum(row) for row in part["test"]["confusion"]]
            shares.append(max(counts) / sum(counts))
        return sum(shares) / len(shares)
    cfg = build_finetune_config(load_yaml(run_dir / "config.yaml"))
    splits = read_index(cfg.shards)["splits"]
    split = splits.get(get_task(cfg.task).test_split or "", {})  # a custom corpus's own test split: not known here
    shares = [n / split["samples"] for n in split.get("labels", {}).values() if n > 0]
    return sum(shares) / len(shares) if shares else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
