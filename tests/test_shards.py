import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.shards.build import build_shards
from maeast.shards.format import FORMAT, decode_audio, iter_tar, read_index, shard_paths
from maeast.shards.inspect import verify_shards
from tests.conftest import pluck, speak


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_folder_recipe_packs_labels_and_rejects(mixed_folder, tmp_path):
    index = build_shards("folder", mixed_folder, tmp_path / "out", shard_size_mb=0.1)
    assert index["labels"] == ["music", "speech"]
    train = index["splits"]["train"]
    assert train["samples"] == 10 and train["labels"] == {"music": 4, "speech": 6}
    assert len(train["shards"]) > 1
    assert index["rejects"]["count"] == 4
    rejects = (tmp_path / "out" / "rejects.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rejects) == ["music-blip", "music-empty", "music-notaudio", "music-truncated"]
    samples = [s for p in shard_paths(tmp_path / "out", "train") for s in iter_tar(p)]
    assert len(samples) == 10
    for key, parts in samples:
        meta = json.loads(parts["json"])
        wav, sr = decode_audio(parts["flac"])
        assert meta["key"] == key and sr == 16000 and len(wav) == meta["num_samples"]
        assert meta["sha256"] == {"flac": hashlib.sha256(parts["flac"]).hexdigest()}
        assert meta["label_ids"] == [index["labels"].index(meta["labels"][0])]
        assert meta["source"].startswith(meta["labels"][0] + "/")
    assert verify_shards(tmp_path / "out").ok


def test_format_2_checksums_every_member(mixed_folder, tmp_path):
    index = build_shards("folder", mixed_folder, tmp_path / "out", shard_size_mb=0.1, codec="wav")
    assert index["format"] == FORMAT == 2
    samples = [s for p in shard_paths(tmp_path / "out", "train") for s in iter_tar(p)]
    assert len(samples) == index["splits"]["train"]["samples"] == 10
    for key, parts in samples:
        recorded = json.loads(parts["json"])["sha256"]
        assert set(recorded) == set(parts) - {"json"} == {"wav"}, key
        assert recorded["wav"] == hashlib.sha256(parts["wav"]).hexdigest(), key


def test_same_input_same_bytes_whatever_the_workers(mixed_folder, tmp_path):
    build_shards("folder", mixed_folder, tmp_path / "one", shard_size_mb=0.1, workers=1)
    build_shards("folder", mixed_folder, tmp_path / "two", shard_size_mb=0.1, workers=2)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


@pytest.fixture(scope="module")
def bigger_folder(tmp_path_factory) -> Path:
    """Enough clips that a build takes a noticeable moment, so it can be killed midway."""
    root = tmp_path_factory.mktemp("bigger")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    for i in range(24):
        folder = root / ("speech" if i % 2 else "music")
        folder.mkdir(exist_ok=True)
        if i % 2:
            speak(" ".join(words[(i + j) % 8] for j in range(6)), folder / f"c{i:02d}.wav", speed=120)
        else:
            pluck(folder / f"c{i:02d}.wav", (["C3", "D3", "E3", "F3"][i % 4], "A4"), seconds=4.0)
    return root


def test_killed_build_resumes_to_identical_bytes(bigger_folder, tmp_path):
    reference = tmp_path / "reference"
    build_shards("folder", bigger_folder, reference, shard_size_mb=0.15)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maeast", "shard", "build", "folder", "--root", str(bigger_folder),
           "--out", str(out), "--shard-size", "0.15"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("*-train-000001.tar")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "the build finished before it could be killed"
    assert list(out.glob("*.tar")), "the build was killed before it wrote a shard"
    build_shards("folder", bigger_folder, out, shard_size_mb=0.15)
    assert tree_bytes(out) == tree_bytes(reference)
    assert not (out / ".build").exists()


def test_damaged_shard_is_rebuilt_on_rerun(mixed_folder, tmp_path):
    out = tmp_path / "out"
    build_shards("folder", mixed_folder, out, shard_size_mb=0.1)
    reference = tree_bytes(out)
    victim = sorted(out.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[:5000])
    report = verify_shards(out)
    assert not report.ok and any(victim.name in p for p in report.problems)
    build_shards("folder", mixed_folder, out, shard_size_mb=0.1)
    assert tree_bytes(out) == reference


def test_tsv_manifest_with_labels(mixed_folder, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    speech = sorted((mixed_folder / "speech").iterdir())
    import soundfile as sf
    rows = [f"{p.relative_to(mixed_folder)}\t{sf.info(p).frames}\tspeech,voice" for p in speech[:4]]
    (manifests / "train.tsv").write_text(f"{mixed_folder}\n" + "\n".join(rows) + "\n")
    (manifests / "valid.tsv").write_text(f"{mixed_folder}\nmusic/m1.wav\t{sf.info(mixed_folder / 'music/m1.wav').frames}\tmusic\n")
    index = build_shards("tsv", manifests, tmp_path / "out")
    assert index["multi_label"] and index["labels"] == ["music", "speech", "voice"]
    assert index["splits"]["train"]["samples"] == 4 and index["splits"]["valid"]["samples"] == 1
    (manifests / "test.tsv").write_text(f"{mixed_folder}\nmusic/m1.wav\tmany\n")
    with pytest.raises(MaeastError, match=r"test.tsv:2"):
        build_shards("tsv", manifests, tmp_path / "out2")


def test_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech"
    texts = {("train-clean-100", "103", "1240"): ["hello world", "good morning"],
             ("dev-clean", "1089", "134686"): ["see you later"]}
    for (subset, speaker, chapter_id), lines in texts.items():
        chapter = root / subset / speaker / chapter_id
        chapter.mkdir(parents=True)
        trans = []
        for n, text in enumerate(lines):
            wav = speak(text, tmp_path / "tmp.wav")
            utt = f"{speaker}-{chapter_id}-{n:04d}"
            subprocess.run(["sox", str(wav), str(chapter / f"{utt}.flac")], check=True)
            trans.append(f"{utt} {text.upper()}")
        (chapter / f"{speaker}-{chapter_id}.trans.txt").write_text("\n".join(trans) + "\n")
    index = build_shards("librispeech", root, tmp_path / "out")
    assert index["splits"]["train"]["samples"] == 2 and index["splits"]["valid"]["samples"] == 1
    meta = json.loads(next(iter_tar(shard_paths(tmp_path / "out", "valid")[0]))[1]["json"])
    assert meta["text"] == "SEE YOU LATER" and meta["speaker"] == "1089" and meta["key"] == "1089-134686-0000"


def test_seeded_split_is_stable(bigger_folder, tmp_path):
    a = build_shards("folder", bigger_folder, tmp_path / "a", options={"valid_fraction": "0.25", "seed": "3"})
    b = build_shards("folder", bigger_folder, tmp_path / "b", options={"valid_fraction": "0.25", "seed": "3"})
    assert set(a["splits"]) == {"train", "valid"}
    assert a["splits"] == b["splits"]
    train_keys = {k for p in shard_paths(tmp_path / "a", "train") for k, _ in iter_tar(p)}
    valid_keys = {k for p in shard_paths(tmp_path / "a", "valid") for k, _ in iter_tar(p)}
    assert not train_keys & valid_keys and len(train_keys | valid_keys) == 24


def test_bad_input_errors(tmp_path, mixed_folder):
    with pytest.raises(MaeastError, match="unknown recipe 'nope'"):
        build_shards("nope", mixed_folder, tmp_path / "out")
    with pytest.raises(MaeastError, match="root folder not found"):
        build_shards("folder", tmp_path / "missing", tmp_path / "out")
    with pytest.raises(MaeastError, match="no option 'colour'"):
        build_shards("folder", mixed_folder, tmp_path / "out", options={"colour": "red"})
    with pytest.raises(MaeastError, match="no index.json"):
        read_index(tmp_path)
