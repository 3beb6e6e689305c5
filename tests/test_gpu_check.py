"""launch/gpu_check.py (`make gpu-check`) in its CPU dry mode: CPU rows run at tiny sizes, CUDA rows say
"needs CUDA" in their row, one table and one JSON line come out, and nothing is recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import gpu_check  # noqa: E402


def rows(*names: str) -> list:
    return [r for r in gpu_check.ROWS if r.name in names]


def test_dry_mode_runs_what_a_cpu_can_and_says_why_for_the_rest(capsys):
    before = sorted(gpu_check.RESULTS.glob("gpu-check-*.json")) if gpu_check.RESULTS.is_dir() else []
    report = gpu_check.check(dry=True, rows=rows("step flash", "step math", "step math compiled"), in_process=True)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == report  # the JSON line comes last
    assert "make gpu-check on CPU (dry mode)" in out and "needs CUDA" in out
    got = report["rows"]
    assert got["step flash"]["status"] == got["step math compiled"]["status"] == "needs CUDA"
    math = got["step math"]
    assert math["status"] == "ok" and math["preset"] == "tiny" and math["device"] == "cpu"
    assert math["step_s"] > 0 and 0 < math["mfu"] < 1.5 and math["peak_mem_mb"] is None
    assert report["dry"] is True
    assert (sorted(gpu_check.RESULTS.glob("gpu-check-*.json")) if gpu_check.RESULTS.is_dir() else []) == before


def test_a_row_over_its_cap_is_stopped_and_says_so():
    result = gpu_check.run_row(rows("zero2")[0], dry=True, cap_s=1.0)
    assert result["status"] == "timed out" and "timed out after 1 s" in result["cells"]["result"]
    assert result["seconds"] < 10


def test_a_spent_budget_leaves_rows_not_run(capsys):
    report = gpu_check.check(dry=True, budget_s=0.0, rows=rows("step math", "step flash"), in_process=True)
    assert report["rows"]["step math"]["status"] == "not run"
    assert report["rows"]["step flash"]["status"] == "needs CUDA"  # a CUDA row costs nothing dry
    assert "budget" in capsys.readouterr().out


@pytest.mark.slow
def test_make_gpu_check_dry_mode_end_to_end():
    """What `make gpu-check` runs on a machine without CUDA: every row in its own subprocess, each its own
    one-process world even when the caller's environment names a port its own process group holds."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(held.getsockname()[1]), RANK="0", WORLD_SIZE="1")
    with held:
        proc = subprocess.run([sys.executable, str(ROOT / "launch" / "gpu_check.py"), "--dry"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    status = {name: r["status"] for name, r in report["rows"].items()}
    assert set(status) == {r.name for r in gpu_check.ROWS}
    assert {name for name, s in status.items() if s == "needs CUDA"} == {r.name for r in gpu_check.ROWS if r.dry_ok}
    assert status.pop("dali") == ("ok" if importlib.util.find_spec("nvidia.dali") else "skipped")
    assert all(s == "ok" for name, s in status.items() if name not in {r.name for r in gpu_check.ROWS if r.dry_ok})
    assert report["rows"]["gpu tests"]["counts"]["skipped"] >= 10  # every gpu test collected, skipped here
    assert report["rows"]["zero2"]["optimizer_steps"] == 3
    assert report["rows"]["fbank"]["cpu_clips_per_s"] > 0


def test_dali_row_where_dali_is_and_where_it_is_not(monkeypatch):
    """The DALI row compares DALI's pipeline with the stream loader's fbank_on device route on the same shards
    (here DALI's CPU mode); without DALI it says so in one line, and the check goes on."""
    if importlib.util.find_spec("nvidia.dali"):
        result = gpu_check.run_row(rows("dali")[0], dry=True, cap_s=120, in_process=True)
        assert result["status"] == "ok", result
        for route in ("dali", "stream_fbank_on_device"):
            assert result["figures"][route]["clips"] == 12 and result["figures"][route]["host_cores"] > 0
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # an import of it now fails, as where it is missing
    result = gpu_check.run_row(rows("dali")[0], dry=True, cap_s=120, in_process=True)
    assert result["status"] == "skipped" and "nvidia-dali not installed here" in result["cells"]["result"]


def test_a_recorded_h100_run_feeds_cores_per_gpu(tmp_path, monkeypatch, capsys):
    """benchmarks/cores_per_gpu.py takes the clips/s of the last recorded H100 run's "step flash" row,
    whose keys are those of every step row (taken here from the dry "step math" row, the same code)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cores_per_gpu

    report = gpu_check.check(dry=True, rows=rows("step math"), in_process=True)
    capsys.readouterr()
    monkeypatch.setattr(cores_per_gpu, "RESULTS", tmp_path)
    clips, source = cores_per_gpu.h100_clips_per_s(10.0)
    assert source.startswith("analytic") and clips == pytest.approx(0.5 * 989e12 / 113.2e9, rel=1e-3)
    row = {**report["rows"].pop("step math"), "seconds": 10.0, "clips_per_s": 3210.0, "mfu": 0.37}
    path = gpu_check.record({**report, "device": "NVIDIA H100 80GB HBM3", "rows": {"step flash": row}}, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("gpu-check-")
    assert cores_per_gpu.h100_clips_per_s(10.0) == (3210.0, f"measured by make gpu-check ({path.name}: MFU 37.0%)")
    assert cores_per_gpu.h100_clips_per_s(2.0)[1].startswith("analytic")  # another clip length: not that run
