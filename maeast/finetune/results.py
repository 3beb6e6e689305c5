"""`maeast compare`'s results from run_matrix's Rows: verdicts, a table, summary lines, JSON, a picture.

    rows = run_matrix(...)  # maeast.finetune.compare
    console.print(table(rows)); summary_lines(rows); write_json(rows, ...); write_png(rows, ...)

A verdict weighs the frozen pretrained encoder's gain over the frozen random one (and over the fbank
statistics baseline, where there is one) against two standard errors of the difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from maeast.files import write_json as write_file
from maeast.finetune.compare import BASELINE, SETTINGS, Row


def verdicts(rows: list[Row]) -> dict[str, dict]:
    """Per task: the frozen pretrained encoder's gain over the frozen random one against two standard
    errors of that difference (binomial over the test clips for accuracy, unpaired, so on the cautious
    side; fold spread for mAP), and in how many folds it is ahead."""
    out = {}
    for task in dict.fromkeys(r.task for r in rows):
        by = {r.setting: r for r in rows if r.task == task}
        if "frozen-random" not in by or "frozen-pretrained" not in by:
            continue
        a, b = by["frozen-random"], by["frozen-pretrained"]
        out[task] = _versus(a, b)
        if BASELINE.name in by:
            out[task]["baseline"] = _versus(by[BASELINE.name], b)
    return out


def _versus(a: Row, b: Row) -> dict:
    """b's gain over a against two standard errors of the difference, and in how many folds b is ahead."""
    gain = b.mean - a.mean
    clips = a.extra.get("clips")
    if a.metric == "accuracy" and clips:
        se = math.sqrt(a.mean * (1 - a.mean) / clips + b.mean * (1 - b.mean) / clips)
    else:
        se = math.sqrt((a.std ** 2 + b.std ** 2) / max(len(a.folds), 1))
    return {"gain": gain, "two_se": 2 * se, "clearly_ahead": gain > 2 * se,
            "folds_ahead": sum(y > x for x, y in zip(a.folds, b.folds)), "folds": len(a.folds)}


def table(rows: list[Row], title: str = "What pretraining buys"):
    """A rich Table: one line per (task, setting) with the test metric (mean +- std over folds), chance and
    time; the task's metric and fold count under its name."""
    from rich.table import Table
    t = Table(title=title, caption="test: mean +- std over folds; chance: the test clips' majority class; "
              "*: reused run")
    for name, justify in (("task", "left"), ("setting", "left"), ("test", "right"), ("chance", "right"),
                          ("time", "right")):
        t.add_column(name, justify=justify, no_wrap=True)
    tasks = list(dict.fromkeys(r.task for r in rows))
    for task in tasks:
        group = [r for r in rows if r.task == task]
        folds = group[0].extra.get("folds") or [None]
        names = [task, f"[dim]{group[0].metric}, {f'{len(folds)} folds' if folds != [None] else 'test split'}[/]"]
        for i, r in enumerate(group):
            t.add_row(names[i] if i < len(names) else "", f"{_label(r.setting)} ({r.extra['protocol']})",
                      f"{100 * r.mean:.1f} +- {100 * r.std:.1f}%", "-" if r.chance is None else f"{100 * r.chance:.1f}%",
                      _duration(r.seconds) + ("*" if r.reused else ""), end_section=i == len(group) - 1)
    return t


def summary_lines(rows: list[Row]) -> list[str]:
    lines = []
    for task, v in verdicts(rows).items():
        parts = [_clause("the frozen random one", v)] + ([_clause("fbank mean+std statistics", v["baseline"])]
                                                         if "baseline" in v else [])
        lines.append(f"{task}: the frozen pretrained encoder is " + "; and ".join(parts))
    lines.append(f"fine-tuning time: {_duration(sum(r.seconds for r in rows))} in all")
    return lines


def _clause(what: str, v: dict) -> str:
    word = "clearly ahead of" if v["clearly_ahead"] else "NOT clearly ahead of"
    return (f"{word} {what}: {100 * v['gain']:+.1f} points (two standard errors: {100 * v['two_se']:.1f}"
            + (f", ahead in {v['folds_ahead']} of {v['folds']} folds)" if v["folds"] > 1 else ")"))


def write_json(rows: list[Row], path: str | Path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**(meta or {}), "settings": {s.name: s.label for s in SETTINGS + (BASELINE,)}, "rows": [asdict(r) for r in rows],
            "verdicts": verdicts(rows), "seconds": sum(r.seconds for r in rows)}
    write_file(path, data)
    return path


def write_png(rows: list[Row], path: str | Path, title: str = "What pretraining buys") -> Path:
    """Grouped bars per task (one per setting) with the fold std as error bars and chance as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    tasks = list(dict.fromkeys(r.task for r in rows))
    shown = SETTINGS + ((BASELINE,) if any(r.setting == BASELINE.name for r in rows) else ())
    width, colors = 0.8 / len(shown), ("tab:gray", "tab:blue", "tab:orange", "tab:olive")
    fig, ax = plt.subplots(figsize=(4.2 + 2.6 * len(tasks), 4.5))
    for i, (setting, color) in enumerate(zip(shown, colors)):
        for j, task in enumerate(tasks):
            r = next((r for r in rows if r.task == task and r.setting == setting.name), None)
            if r is None:
                continue
            x = j + (i - (len(shown) - 1) / 2) * width
            low, high = min(r.std, r.mean), min(r.std, 1.0 - r.mean)  # the spread, within [0, 100] %
            ax.bar(x, 100 * r.mean, width, yerr=[[100 * low], [100 * high]], capsize=3, color=color,
                   label=setting.label if j == 0 else None)
            ax.text(x, 100 * (r.mean + high) + 1, f"{100 * r.mean:.1f}\n{_duration(r.seconds)}", ha="center",
                    va="bottom", fontsize=7)
    chances = [(j, next(r.chance for r in rows if r.task == task)) for j, task in enumerate(tasks)]
    for n, (j, chance) in enumerate((j, c) for j, c in chances if c is not None):
        ax.hlines(100 * chance, j - 0.45, j + 0.45, colors="black", linestyles="--",
                  label="chance (majority class)" if n == 0 else None)
    metrics = sorted({r.metric for r in rows})
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(f"test {' / '.join(metrics)} (%), mean +- std over folds")
    ax.set_ylim(0, min(100, max(100 * (r.mean + r.std) for r in rows)) + 15)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(setting: str) -> str:
    return next(s.label for s in SETTINGS + (BASELINE,) if s.name == setting)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
