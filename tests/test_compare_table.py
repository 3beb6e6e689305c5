"""`maeast compare`'s table is printed whole where the output is a file or a pipe (rich's 80 columns there)."""

from __future__ import annotations

import io

from rich.console import Console

from maeast.cli.compare import print_whole
from maeast.finetune.compare import BASELINE, SETTINGS, Row
from maeast.finetune.results import table


def rows() -> list[Row]:
    out = []
    for task, folds in (("speechcommands_v1", [0.702]), ("esc50", [0.31, 0.35, 0.29, 0.33, 0.30])):
        for i, s in enumerate(SETTINGS + (BASELINE,)):
            mean = sum(folds) / len(folds) + 0.01 * i
            out.append(Row(task, s.name, "accuracy", mean, 0.0213 * (i + 1), folds, 0.125, 61.0 + i, f"runs/{s.name}",
                           extra={"protocol": "superb" if "frozen" in s.name else "full", "folds": folds}))
    return out


def test_the_table_is_whole_in_a_file_of_80_columns():
    file = io.StringIO()
    out = Console(file=file, width=80)  # what rich takes for a file or a pipe
    print_whole(out, table(rows(), "What pretraining buys: runs/pretrain/encoder, fine-tuned with finetune_small"))
    text = file.getvalue()
    assert "…" not in text and "..." not in text
    for r in rows():
        assert f"{100 * r.mean:.1f} +- {100 * r.std:.1f}%" in text  # every figure, whole
    assert max(len(line) for line in text.splitlines()) > 80


def test_a_table_that_fits_is_printed_as_before():
    narrow, plain = io.StringIO(), io.StringIO()
    t = table(rows()[:1])
    print_whole(Console(file=narrow, width=200), t)
    Console(file=plain, width=200).print(t)
    assert narrow.getvalue() == plain.getvalue()
