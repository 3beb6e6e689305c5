from typer.testing import CliRunner

from maeast.cli import app

runner = CliRunner()


def test_build_inspect_verify(mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["shard", "build", "folder", "--root", str(mixed_folder), "--out", str(out),
                                 "--shard-size", "0.1", "-j", "2"])
    assert result.exit_code == 0, result.output
    assert "rejected: 4" in result.output
    result = runner.invoke(app, ["shard", "inspect", str(out), "--verify"])
    assert result.exit_code == 0 and "verified" in result.output
    shard = sorted(out.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["shard", "inspect", str(out), "--verify"])
    assert result.exit_code == 1 and "sha256" in result.output


def test_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["shard", "build", "nope", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown recipe 'nope'; valid recipes:" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["shard", "build", "folder", "--root", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["shard", "inspect", str(tmp_path)])
    assert result.exit_code == 2 and "no index.json" in result.output
    result = runner.invoke(app, ["shard", "build", "folder", "--root", str(tmp_path), "-o", "novalue"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_the_command_line_starts_without_torch():
    # `maeast --help` and argument errors stay fast: torch is imported inside the commands that use it
    import subprocess
    import sys
    code = "import sys, maeast.cli; assert 'torch' not in sys.modules, 'maeast.cli imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
