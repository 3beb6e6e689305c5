"""model.views on the CPU demo: what K masked views of each decoded clip buy in the same wall-clock time.

The demo's pretraining recipe (pretrain_small: the small frame-token model, 16 views of 2 s crops per step
in 2 micro-batches of 8, the loader in the process) on the demo's unlabelled shards, once per K in --views
(default 1, 2, 4). The batch sizes count views, so every K runs the same model work per step and the loader
decodes 16 / K clips a step: K = 4 reads 4 clips a step and masks each 4 times. The runs are open side by
side and take turns in slices of --slice seconds (so that load from other work on the machine falls on all
of them alike) until each has stepped for --seconds of wall-clock time. Then the online probe
(maeast.pretrain.probe: logistic regression and kNN on the frozen encoder's every-layer mean+std features
of the demo's keywords, fitted on the valid split, scored on the test split, as the demo's eval.probe_*)
scores each final encoder, and the randomly initialized one that every K starts from.

Figures per K: optimizer steps done, decoded clips/s and masked views/s (over the steps' wall-clock time),
data wait (the share of the step time spent waiting on the loader: decoding, cropping, fbank), the mean
training loss of the last 20 steps, and the probe's linear and kNN accuracy at the end.

    python benchmarks/views.py                         # 3 x 300 s of training, then the probes: about 20 minutes
    python benchmarks/views.py --seconds 60 --views 1 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from harness import Bench

from maeast.model import MAEAST
from maeast.pretrain import load_config
from maeast.pretrain.loop import endless, open_session
from maeast.pretrain.probe import OnlineProbe
from maeast.train.run import start

SHARDS = Path("/work/main/shards/demo")


def session(views: int, run_dir: Path, shards: Path, threads: int):
    """An open pretraining session of the demo recipe with model.views `views`, and its endless stream."""
    cfg = load_config("pretrain_small", [f"model.views={views}", f"data.shards=[{shards / 'unlabelled'}]",
                                         f"run.dir={run_dir}", "eval.every=0", "eval.probe_every=0",
                                         f"eval.probe_shards={shards / 'keywords'}", "run.save_every_steps=100000",
                                         f"run.threads={threads}"])
    start(cfg.run)
    s = open_session(cfg, None, False, None)
    return s, endless(s.loader)


def run_for(s, stream, seconds: float, totals: dict) -> None:
    """Optimizer steps of session s until `seconds` of step time have passed (or its schedule ends)."""
    spent = 0.0
    while spent < seconds and s.step < s.cfg.schedule.steps:
        record = s.trainer.step(stream.__next__, number=s.step + 1, key=(s.step,))
        s.step = record["step"]
        spent += record["step_s"]
        totals["seconds"] += record["step_s"]
        totals["wait"] += record["data_wait"] * record["step_s"]
        totals["clips"] += record["clips"]
        totals["views"] += record.get("views", record["clips"])
        totals["losses"].append(record["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=300.0, help="wall-clock seconds of training per K")
    parser.add_argument("--slice", type=float, default=20.0, help="seconds each run steps before the next one's turn")
    parser.add_argument("--shards", type=Path, default=SHARDS, help="the demo's shards (unlabelled/, keywords/)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the demo's: 2; on 2 shared cores 1 thread stepped 6x faster in a 30 s try)")
    args = parser.parse_args()
    bench = Bench("views", repeats=1, warmup=0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {k: session(k, Path(tmp) / f"views{k}", args.shards, args.threads) for k in args.views}
        totals = {k: {"seconds": 0.0, "wait": 0.0, "clips": 0, "views": 0, "losses": []} for k in args.views}
        with bench.status(f"training {len(runs)} runs in turns, {args.seconds:g} s each"):
            while any(t["seconds"] < args.seconds and runs[k][0].step < runs[k][0].cfg.schedule.steps
                      for k, t in totals.items()):
                for k, (s, stream) in runs.items():
                    run_for(s, stream, min(args.slice, args.seconds - totals[k]["seconds"]), totals[k])
        first = runs[args.views[0]][0]
        with bench.status("opening the probe (reading the keywords' clips, scoring the fbank baseline)"):
            probe = OnlineProbe.open(first.cfg.eval, first.features)
        torch.manual_seed(first.cfg.run.seed)  # the encoder every run started from
        scores = {"init": probe.score(MAEAST(first.cfg.model).encoder)}
        scores.update({k: probe.score(s.engine.module.encoder) for k, (s, _) in runs.items()})

    rows = [("random init", 0, "-", "-", "-", "-", "-", f"{100 * scores['init']['linear']:.1f}",
             f"{100 * scores['init']['knn']:.1f}")]
    for k, t in totals.items():
        s, score = runs[k][0], scores[k]
        last = t["losses"][-20:]
        figures = {"steps": s.step, "clips_per_s": t["clips"] / t["seconds"], "views_per_s": t["views"] / t["seconds"],
                   "data_wait": t["wait"] / t["seconds"], "loss_last20": sum(last) / len(last),
                   "probe_linear": score["linear"], "probe_knn": score["knn"], "seconds": t["seconds"]}
        bench.update({f"views{k}.{name}": v for name, v in figures.items()})
        rows.append((f"views {k}", s.step, f"{figures['clips_per_s']:.1f}", f"{figures['views_per_s']:.1f}",
                     f"{100 * figures['data_wait']:.1f}", f"{figures['loss_last20']:.3f}", t["clips"],
                     f"{100 * score['linear']:.1f}", f"{100 * score['knn']:.1f}"))
    bench.table(f"pretrain_small on {args.shards / 'unlabelled'}, {args.seconds:g} s of steps per K (in turns of "
                f"{args.slice:g} s), probe on {args.shards / 'keywords'} ({probe.baseline['fbank_linear'] * 100:.1f}% "
                f"linear / {probe.baseline['fbank_knn'] * 100:.1f}% kNN on fbank statistics)",
                ["run", "steps", "decoded clips/s", "masked views/s", "data wait %", "loss (last 20)",
                 "clips decoded", "probe linear %", "probe kNN %"], rows)
    bench.update({"init.probe_linear": scores["init"]["linear"], "init.probe_knn": scores["init"]["knn"],
                  "fbank_linear": probe.baseline["fbank_linear"], "fbank_knn": probe.baseline["fbank_knn"],
                  "budget_s": args.seconds, "threads": args.threads, "wall_s": time.perf_counter() - started})
    bench.finish(own_load=float(args.threads))


if __name__ == "__main__":
    main()
