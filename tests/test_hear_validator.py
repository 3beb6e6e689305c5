"""HEAR's own validator (hearvalidator 2021.0.2, the benchmark's check of a submission) on maeast.inference.hear,
for a tiny frame model and a tiny 16x16 patch model.

hearvalidator imports tensorflow, which does not belong in maeast's environment: `make test` installs both
into a folder of their own (the Makefile's hear-validator target) and names it in MAEAST_HEAR_VALIDATOR; the
validator runs in a subprocess with that folder appended to the path, so maeast's own packages win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_export

SITE = os.environ.get("MAEAST_HEAR_VALIDATOR", "")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SITE, reason="MAEAST_HEAR_VALIDATOR is not set: run "
                                                   "`make test` (or `make hear-validator`) to install the validator")]


@pytest.mark.parametrize("tokens", ["frame", "patch"])
def test_hearvalidator_passes(tokens, tmp_path):
    shape = {"patch_time": 2, "patch_freq": 128} if tokens == "frame" else {"patch_time": 16, "patch_freq": 16}
    export = make_export(tmp_path, **shape)
    code = (f"import sys; sys.path.append({SITE!r}); "
            f"sys.argv = ['hear-validator', 'maeast.inference.hear', '-m', {str(export)!r}, '-d', 'cpu']; "
            "from hearvalidator.validate import main; main()")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Looks good!" in done.stdout, out[-3000:]  # the validator's last line when every check passed
