"""A shard build in parts (`maeast shard build ... --part I/N`, one machine or array task each) merged by
`maeast shard merge OUT`: the same files as one machine's build, byte for byte, whatever N and the order
the parts ran in; a missing or duplicated part, or a bad --part, is one line."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from maeast.cli import app
from maeast.errors import MaeastError
from maeast.shards.build import build_shards
from maeast.shards.parts import build_part, merge_parts, parse_part
from tests.conftest import make_corpus

SIZE_MB = 0.1
runner = CliRunner()


def every_file(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (hidden ones and subfolders too), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Twelve clips of real speech and music, one more seeded into a valid split, and a broken file."""
    root = make_corpus(tmp_path_factory.mktemp("corpus"))
    (root / "music" / "broken.wav").write_bytes(b"RIFF but not a wav file")
    return root


OPTIONS = {"valid_fraction": "0.25", "seed": "1"}


@pytest.fixture(scope="module")
def whole(corpus, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("whole") / "shards"
    index = build_shards("folder", corpus, out, options=OPTIONS, shard_size_mb=SIZE_MB)
    assert len(index["splits"]["train"]["shards"]) >= 4 and set(index["splits"]) == {"train", "valid"}
    assert index["rejects"]["count"] == 1
    return every_file(out)


def test_three_parts_merge_to_the_bytes_of_one_build(corpus, whole, tmp_path):
    out = tmp_path / "parts"
    records = {i: build_part("folder", corpus, out, f"{i}/3", options=OPTIONS, shard_size_mb=SIZE_MB,
                             workers=2 if i == 2 else 1) for i in (3, 1, 2)}  # any order, any workers
    assert [records[i]["range"] for i in (1, 2, 3)] == [[0, 4], [4, 8], [8, 13]]
    assert not (out / "index.json").exists() and not list(out.glob("*.tar"))
    index = merge_parts(out)
    assert every_file(out) == whole  # shards, DALI indexes, rejects.tsv, index.json; no .parts or .build left
    assert merge_parts(out) == index  # a finished merge is a no-op


def test_parts_through_the_command_line(corpus, whole, tmp_path):
    out = tmp_path / "cli"
    for part in ("2/2", "1/2"):
        result = runner.invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out", str(out),
                                     "--shard-size", str(SIZE_MB), "--part", part,
                                     "-o", "valid_fraction=0.25", "-o", "seed=1"])
        assert result.exit_code == 0, result.output
        assert f"part {part}: items" in result.output and "maeast shard merge" in result.output
    result = runner.invoke(app, ["shard", "merge", str(out)])
    assert result.exit_code == 0, result.output
    assert every_file(out) == whole


@pytest.mark.parametrize("bad", ["3", "0/3", "4/3", "a/b", "1/0", "-1/3", "1/3/5"])
def test_a_bad_part_is_one_line(corpus, tmp_path, bad):
    with pytest.raises(MaeastError, match=r"--part .* is not I/N with 1 <= I <= N") as e:
        parse_part(bad)
    assert "\n" not in str(e.value)
    result = runner.invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out", str(tmp_path / "o"),
                                 "--part", bad])
    assert result.exit_code == 2 and "is not I/N" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def parts(corpus: Path, out: Path, *names: str) -> None:
    for name in names:
        build_part("folder", corpus, out, name, options=OPTIONS, shard_size_mb=SIZE_MB)


def one_line_error(out: Path) -> str:
    with pytest.raises(MaeastError) as e:
        merge_parts(out)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_missing_or_duplicate_part_is_one_line_naming_it(corpus, tmp_path):
    out = tmp_path / "out"
    assert "holds no finished part" in one_line_error(out)
    parts(corpus, out, "1/3", "3/3")
    message = one_line_error(out)
    assert "part 2/3 is missing" in message and "items 4-7 of 13" in message and "--part 2/3" in message
    parts(corpus, out, "2/3", "2/2")
    message = one_line_error(out)
    assert "part 2/2 holds items 6-12, which part 2/3 holds too" in message and "part-2-of-2" in message
    for stale in (out / ".parts").glob("part-2-of-2*"):
        stale.unlink()
    assert merge_parts(out)["splits"]["train"]["samples"] == 9
    result = runner.invoke(app, ["shard", "merge", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "holds no finished part" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_killed_part_keeps_its_finished_runs(corpus, whole, tmp_path):
    out = tmp_path / "out"
    parts(corpus, out, "1/2", "2/2")
    runs = sorted((out / ".parts").glob("part-2-of-2-*.run"))
    assert len(runs) >= 2
    kept = {p.name: p.stat().st_ino for p in runs[:-1]}
    (out / ".parts" / "part-2-of-2.json").unlink()  # as if killed before its last run was published
    runs[-1].unlink()
    parts(corpus, out, "2/2")
    assert {p.name: p.stat().st_ino for p in sorted((out / ".parts").glob("part-2-of-2-*.run"))[:-1]} == kept
    merge_parts(out)
    assert every_file(out) == whole


def test_a_damaged_run_stops_the_merge(corpus, tmp_path):
    out = tmp_path / "out"
    parts(corpus, out, "1/1")
    run = sorted((out / ".parts").glob("*.run"))[0]
    run.write_bytes(run.read_bytes()[:-10])
    assert "is damaged" in one_line_error(out) and not (out / "index.json").exists()


def test_parts_to_a_bucket_merge_to_the_local_bytes(corpus, whole, s3):
    url = s3.url("corpus/shards")
    parts(corpus, url, "2/3", "1/3", "3/3")
    merge_parts(url)
    found = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="corpus/shards/").get("Contents", [])
    assert {o["Key"].removeprefix("corpus/shards/"): s3.get(o["Key"]) for o in found} == whole
