"""Recipes for the official corpora, on tiny trees in their exact layouts and metadata formats.

Audio is real speech (espeak-ng) and sox noise/plucks, made once per session and copied or converted.
Expected labels, splits and folds are read back from the metadata files the tests write.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maeast.errors import MaeastError
from maeast.shards.build import build_shards
from maeast.shards.format import iter_tar, shard_paths
from maeast.shards.recipes import run_recipe
from tests.conftest import pluck, sox, speak

WORDS = ["yes", "no", "go", "dog", "bed", "learn", "forward", "rooster", "guitar", "hello there"]


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Base clips: one spoken word each, a plucked chord, and the two noise files Speech Commands ships."""
    folder = tmp_path_factory.mktemp("clips")
    made = {w: speak(w, folder / f"{w.replace(' ', '_')}.wav", speed=200) for w in WORDS}
    made["chord"] = pluck(folder / "chord.wav", seconds=1.0)
    made["pink_noise"] = folder / "pink_noise.wav"
    sox("-n", "-r", "16000", "-b", "16", made["pink_noise"], "synth", "3.5", "pinknoise", "vol", "0.3")
    made["white_noise"] = folder / "white_noise.wav"
    sox("-n", "-r", "16000", "-b", "16", made["white_noise"], "synth", "2.2", "whitenoise", "vol", "0.2")
    return made


def put(src: Path, dst: Path, rate: int | None = None) -> Path:
    """Copy or convert a clip to dst (format from the extension; ffmpeg for m4a/mkv)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix in (".m4a", ".mkv"):
        codec = "aac" if dst.suffix == ".m4a" else "libvorbis"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-c:a", codec, str(dst)], check=True)
    elif dst.suffix == ".wav" and rate is None:
        shutil.copyfile(src, dst)
    else:
        sox(src, *(["-r", str(rate)] if rate else []), dst)
    return dst


def sample_json(out: Path, split: str, key: str | None = None) -> dict:
    for shard in shard_paths(out, split):
        for k, parts in iter_tar(shard):
            if key is None or k == key:
                return json.loads(parts["json"])
    raise AssertionError(f"no sample {key} in split {split}")


def error_of(recipe: str, root: Path, **options) -> str:
    with pytest.raises(MaeastError) as info:
        run_recipe(recipe, root, {k: str(v) for k, v in options.items()})
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- AudioSet

CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"),
           ("/m/02zsn", "Female speech, woman speaking"), ("/m/0ytgt", "Child speech, kid speaking"),
           ("/m/04rlf", "Music"), ("/m/0342h", "Guitar")]
# split -> (ytid, start, end, labels, file below root or None when the clip was never downloaded)
SEGMENTS = {
    "balanced_train": [("--PJHxphWEs", 30.0, 40.0, ["/m/09x0r", "/m/05zppz"],
                        "balanced_train_segments/Y--PJHxphWEs.wav"),
                       ("-0RWZT-miFs", 420.0, 430.0, ["/m/04rlf", "/m/0342h"],
                        "balanced_train_segments/-0RWZT-miFs_420.000_430.000.flac"),
                       ("-1nilez17Dg", 30.0, 40.0, ["/m/02zsn"], None)],
    "eval": [("-0Gj8-vB1q4", 30.0, 40.0, ["/m/0ytgt", "/m/09x0r"], "eval/-0Gj8-vB1q4_30.ogg"),
             ("-0SdAVK79lg", 30.5, 40.5, ["/m/04rlf"], "eval/Y-0SdAVK79lg_30500_40500.m4a")],
    "unbalanced_train": [("---1_cCGK4M", 0.0, 10.0, ["/m/09x0r"], "audio/---1_cCGK4M_0.mkv")],
}


def write_audioset_meta(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(CLASSES)]
    (folder / "class_labels_indices.csv").write_text("\n".join(rows) + "\n")
    for split, segments in SEGMENTS.items():
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={len(segments)}, num_segs={len(segments)}, num_unique_labels=6, num_positive_labels=9",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        lines += [f'{y}, {s:.3f}, {e:.3f}, "{",".join(labels)}"' for y, s, e, labels, _ in segments]
        (folder / f"{split}_segments.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def audioset(clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audioset")
    write_audioset_meta(root / "metadata")
    sources = iter([clips["hello there"], clips["chord"], clips["yes"], clips["guitar"], clips["no"]])
    for segments in SEGMENTS.values():
        for *_, rel in segments:
            if rel:
                put(next(sources), root / rel, rate=44100 if rel.endswith((".flac", ".ogg")) else None)
    put(clips["dog"], root / "audio" / "not_in_any_csv.wav")
    return root


def test_audioset_labels_splits_and_coverage(audioset):
    scan = run_recipe("audioset", audioset)
    assert scan.labels == [mid for mid, _ in CLASSES] and scan.multi_label
    assert scan.report["display_names"] == [name for _, name in CLASSES]
    expected = {(split, y): (tuple(labels), rel)
                for split, segs in SEGMENTS.items() for y, _, _, labels, rel in segs if rel}
    got = {(i.split, i.extra["ytid"]): (i.labels, str(i.path.relative_to(audioset))) for i in scan.items}
    assert got == expected
    assert all(i.start is None and i.end is None for i in scan.items)
    cov = scan.report["coverage"]
    assert [cov[s]["missing"] for s in SEGMENTS] == [1, 0, 0]
    assert cov["balanced_train"]["missing_examples"] == ["-1nilez17Dg"]
    assert {s: cov[s]["found"] for s in SEGMENTS} == {"balanced_train": 2, "eval": 2, "unbalanced_train": 1}
    assert scan.report["unmatched_files"] == 1 and scan.report["unmatched_examples"] == ["audio/not_in_any_csv.wav"]


def test_audioset_options(audioset):
    only_eval = run_recipe("audioset", audioset, {"csvs": "eval_segments.csv", "meta": "metadata"})
    assert {i.split for i in only_eval.items} == {"eval"} and len(only_eval.items) == 2
    full = run_recipe("audioset", audioset, {"csvs": "eval,balanced_train", "segments": "full"})
    assert {(i.extra["ytid"], i.start, i.end) for i in full.items if i.split == "eval"} == {
        ("-0Gj8-vB1q4", 30.0, 40.0), ("-0SdAVK79lg", 30.5, 40.5)}
    assert "unknown CSV 'bogus'" in error_of("audioset", audioset, csvs="bogus")
    assert "segments='x'" in error_of("audioset", audioset, segments="x")


def test_audioset_metadata_errors(tmp_path):
    write_audioset_meta(tmp_path)
    csv_path = tmp_path / "balanced_train_segments.csv"
    good = csv_path.read_text()
    csv_path.write_text(good + "-zzzzzzzzzz, 30.000, 40.000\n")  # line 7: a field short
    assert "balanced_train_segments.csv:7:" in error_of("audioset", tmp_path)
    csv_path.write_text(good.replace('"/m/02zsn"', '"/m/02zsn,/m/0bogus"'))
    message = error_of("audioset", tmp_path)
    assert "balanced_train_segments.csv:6:" in message and "/m/0bogus" in message
    csv_path.write_text(good.replace("420.000", "four"))
    assert "balanced_train_segments.csv:5:" in error_of("audioset", tmp_path)
    csv_path.write_text(good + good.splitlines()[3] + "\n")  # a row listed twice: counted, kept once
    dup = run_recipe("audioset", tmp_path).report["coverage"]["balanced_train"]
    assert (dup["listed"], dup["found"], dup["missing"], dup["duplicate_rows"]) == (4, 0, 3, 1)
    csv_path.write_text(good)
    classes = tmp_path / "class_labels_indices.csv"
    classes.write_text(classes.read_text().replace("\n2,", "\n7,"))
    assert "class_labels_indices.csv:4:" in error_of("audioset", tmp_path)
    classes.unlink()
    assert "class_labels_indices.csv not found" in error_of("audioset", tmp_path)


def test_audioset_builds(audioset, tmp_path):
    index = build_shards("audioset", audioset, tmp_path / "out")
    mids = [mid for mid, _ in CLASSES]
    assert index["labels"] == mids and index["multi_label"] and index["rejects"]["count"] == 0
    samples = {s: v["samples"] for s, v in index["splits"].items()}
    assert samples == {"balanced_train": 2, "eval": 2, "unbalanced_train": 1}
    assert index["report"]["coverage"]["balanced_train"]["missing"] == 1
    meta = sample_json(tmp_path / "out", "eval", "-0SdAVK79lg-30500")  # the m4a clip
    assert meta["labels"] == ["/m/04rlf"] and meta["label_ids"] == [mids.index("/m/04rlf")]
    assert meta["ytid"] == "-0SdAVK79lg" and meta["yt_segment"] == [30.5, 40.5] and meta["split"] == "eval"


# ---------------------------------------------------------------- ESC-50

ESC_ROWS = ["1-100032-A-0.wav,1,0,dog,True,100032,A", "2-114587-A-1.wav,2,1,rooster,True,114587,A",
            "3-157615-A-2.wav,3,2,pig,False,157615,A", "4-182395-A-0.wav,4,0,dog,True,182395,A",
            "5-200334-A-1.wav,5,1,rooster,True,200334,A", "5-9032-A-2.wav,5,2,pig,False,9032,A"]
ESC_HEADER = "filename,fold,target,category,esc10,src_file,take"


@pytest.fixture(scope="module")
def esc50(clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("esc50")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join([ESC_HEADER, *ESC_ROWS]) + "\n")
    for row, word in zip(ESC_ROWS[:5], ["dog", "rooster", "chord", "dog", "rooster"]):
        put(clips[word], root / "audio" / row.split(",")[0], rate=44100)
    put(clips["bed"], root / "audio" / "not-listed.wav")
    return root


def test_esc50_labels_folds_and_subset(esc50):
    scan = run_recipe("esc50", esc50)
    rows = [r.split(",") for r in ESC_ROWS]
    assert scan.labels == ["dog", "rooster", "pig"]  # ordered by target
    expected = {r[0][:-4]: ((r[3],), int(r[1]), r[4] == "True") for r in rows[:5]}
    assert {i.key: (i.labels, i.fold, i.extra["esc10"]) for i in scan.items} == expected
    assert {i.split for i in scan.items} == {"train"}
    assert scan.report["missing_audio"] == 1 and scan.report["unlisted_examples"] == ["not-listed.wav"]
    esc10 = run_recipe("esc50", esc50, {"subset": "esc10"})
    assert esc10.corpus == "esc10" and esc10.labels == ["dog", "rooster"] and len(esc10.items) == 4


def test_esc50_metadata_errors(tmp_path):
    (tmp_path / "audio").mkdir()
    assert "meta/esc50.csv" in error_of("esc50", tmp_path)
    (tmp_path / "meta").mkdir()
    csv_path = tmp_path / "meta" / "esc50.csv"
    csv_path.write_text("\n".join([ESC_HEADER, ESC_ROWS[0], ESC_ROWS[1].replace(",2,1,", ",two,1,")]) + "\n")
    assert "esc50.csv:3:" in error_of("esc50", tmp_path)
    csv_path.write_text("\n".join([ESC_HEADER, ESC_ROWS[0], ESC_ROWS[2]]) + "\n")  # targets 0 and 2
    assert "target 1 has no clip" in error_of("esc50", tmp_path)
    csv_path.write_text("\n".join([ESC_HEADER.replace("fold", "folds"), ESC_ROWS[0]]) + "\n")
    assert "esc50.csv:1:" in error_of("esc50", tmp_path)


def test_esc50_builds(esc50, tmp_path):
    index = build_shards("esc50", esc50, tmp_path / "out")
    assert build_shards("esc50", esc50, tmp_path / "out") == index  # unchanged tree: nothing to redo
    assert index["labels"] == ["dog", "rooster", "pig"] and index["splits"]["train"]["samples"] == 5
    meta = sample_json(tmp_path / "out", "train", "3-157615-A-2")
    got = (meta["labels"], meta["label_ids"], meta["fold"], meta["esc10"], meta["target"])
    assert got == (["pig"], [2], 3, False, 2)
    assert meta["orig_sample_rate"] == 44100 and meta["sample_rate"] == 16000


# ---------------------------------------------------------------- Speech Commands


def tf_which_set(name: str) -> str:
    """TensorFlow's speech_commands which_set(validation=10, testing=10), written out independently."""
    speaker = re.sub(r"_nohash_.*$", "", name)
    percent = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
    return "valid" if percent < 10 else "test" if percent < 20 else "train"


def speakers_by_split() -> dict[str, list[str]]:
    found = {"train": [], "valid": [], "test": []}
    i = 0
    while min(len(v) for v in found.values()) < 2:
        name = f"{i * 2654435761 % 2**32:08x}"
        found[tf_which_set(f"{name}_nohash_0.wav")].append(name)
        i += 1
    return {k: v[:2] for k, v in found.items()}


def make_words(root: Path, clips, words: list[str], speakers: list[str]) -> list[str]:
    made = []
    for word in words:
        for n, spk in enumerate(speakers):
            put(clips[word] if word in clips else clips["hello there"], root / word / f"{spk}_nohash_{n % 2}.wav")
            made.append(f"{word}/{spk}_nohash_{n % 2}.wav")
    for noise in ("pink_noise", "white_noise"):
        put(clips[noise], root / "_background_noise_" / f"{noise}.wav")
    (root / "_background_noise_" / "README.md").write_text("noise recordings and simulations\n")
    return made


@pytest.fixture(scope="module")
def sc_v2(clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sc_v2")
    files = make_words(root, clips, ["yes", "learn", "forward", "dog"], ["0a7c2a8d", "1b4c9b89", "c22d3f18"])
    (root / "validation_list.txt").write_text("\n".join(files[0::3] + ["bed/ffffffff_nohash_0.wav"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(files[1::3]) + "\n")
    return root


def test_speechcommands_v2_words_and_lists(sc_v2, tmp_path):
    scan = run_recipe("speechcommands", sc_v2)
    assert scan.corpus == "speechcommands_v2" and len(scan.labels) == 35 and scan.labels == sorted(scan.labels)
    assert {"backward", "visual", "yes", "zero"} <= set(scan.labels) and "_background_noise_" not in scan.labels
    valid = set((sc_v2 / "validation_list.txt").read_text().split())
    test = set((sc_v2 / "testing_list.txt").read_text().split())
    for item in scan.items:
        rel = f"{item.path.parent.name}/{item.path.name}"
        assert item.split == ("valid" if rel in valid else "test" if rel in test else "train")
        assert item.labels == (item.path.parent.name,) and item.speaker == item.path.name.split("_nohash_")[0]
    assert len(scan.items) == 12 and {i.split for i in scan.items} == {"train", "valid", "test"}
    assert scan.report["listed_missing"] == {"valid": 1, "test": 0}
    bad = tmp_path
    shutil.copytree(sc_v2 / "yes", bad / "learn")
    (bad / "validation_list.txt").write_text("learn/0a7c2a8d_nohash_0.wav\nlearn 1b4c9b89_nohash_1.wav\n")
    (bad / "testing_list.txt").write_text("")
    assert "validation_list.txt:2:" in error_of("speechcommands", bad)
    (bad / "validation_list.txt").write_text("learn/0a7c2a8d_nohash_0.wav\n")
    (bad / "testing_list.txt").unlink()
    assert "testing_list.txt not found" in error_of("speechcommands", bad, version=2)
    assert "version='3'" in error_of("speechcommands", sc_v2, version=3)


@pytest.fixture(scope="module")
def sc_v1(clips, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sc_v1")
    root, test = base / "speech_commands_v0.01", base / "speech_commands_test_set_v0.01"
    speakers = [s for v in speakers_by_split().values() for s in v]
    files = make_words(root, clips, ["yes", "go", "dog", "bed"], speakers)
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        listed = [f for f in files if tf_which_set(Path(f).name) == split]
        listed += [f for f in files if tf_which_set(Path(f).name) == "train"][:1] if split == "test" else []
        (root / name).write_text("\n".join(listed) + "\n")  # the test list holds one train file too
    for folder, word in [("yes", "yes"), ("no", "no"), ("_unknown_", "bed"), ("_silence_", "white_noise")]:
        put(clips[word], test / folder / f"{'feedbeef'}_nohash_0.wav", rate=16000)
    return root, test


def test_speechcommands_v1_superb_task(sc_v1):
    root, test_root = sc_v1
    scan = run_recipe("speechcommands", root)
    assert scan.corpus == "speechcommands_v1"
    assert scan.labels == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                           "_unknown_", "_silence_"]
    words = [i for i in scan.items if "word" in i.extra]
    assert len(words) == 24  # no test_root: the hashed test part is the test split
    assert scan.report["list_disagreements"] == {"valid": 0, "test": 1}
    for item in words:
        assert item.split == tf_which_set(item.path.name)
        assert item.labels == ((item.extra["word"],) if item.extra["word"] in ("yes", "go") else ("_unknown_",))
    silence = [i for i in scan.items if i.labels == ("_silence_",)]
    # every whole second of pink (3.5 s) and white (2.2 s) noise, in train and in valid
    assert sorted((i.split, i.path.stem, i.start, i.end) for i in silence) == sorted(
        (split, noise, float(s), float(s + 1)) for split in ("train", "valid")
        for noise, n in (("pink_noise", 3), ("white_noise", 2)) for s in range(n))
    half = run_recipe("speechcommands", root, {"silence_hop": "0.5"})
    assert sum(i.labels == ("_silence_",) for i in half.items) == 2 * (6 + 3)
    with_test = run_recipe("speechcommands", root, {"test_root": str(test_root)})
    tests = [i for i in with_test.items if i.split == "test"]
    assert sorted(i.labels[0] for i in tests) == ["_silence_", "_unknown_", "no", "yes"]
    assert with_test.report["left_out"]["hashed_test"] == sum(i.split == "test" for i in words) > 0
    assert "silence_hop='0'" in error_of("speechcommands", root, silence_hop=0)
    assert "test_root" in error_of("speechcommands", root, test_root=root.parent / "nowhere")
    assert "12 test classes" in error_of("speechcommands", root, test_root=root)


def test_speechcommands_v1_builds_through_the_cli(sc_v1, tmp_path):
    from maeast.cli import app

    root, test_root = sc_v1
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["shard", "build", "speechcommands", "--root", str(root), "--out", str(out),
                                      "-o", "version=1", "-o", f"test_root={test_root}"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert set(index["splits"]) == {"train", "valid", "test"} and index["rejects"]["count"] == 0
    assert index["splits"]["test"]["labels"] == {"_silence_": 1, "_unknown_": 1, "no": 1, "yes": 1}
    meta = sample_json(out, "valid", "silence-valid-pink_noise-0002")
    assert meta["labels"] == ["_silence_"] and meta["label_ids"] == [11] and meta["segment"] == [2.0, 3.0]
    assert meta["num_samples"] == 16000
    result = CliRunner().invoke(app, ["shard", "build", "speechcommands", "--root", str(root), "--out", str(out),
                                      "-o", "size=2"])
    assert result.exit_code == 2 and "has no option 'size'" in result.output


# ---------------------------------------------------------------- VoxCeleb1

IDEN = ["1 id10001/1zcIwhmdeo4/00001.wav", "2 id10001/1zcIwhmdeo4/00002.wav", "3 id10001/7gWzIy6yIIk/00001.wav",
        "1 id10002/0_laIeN-Q44/00001.wav", "3 id10270/5r0dWxy17C8/00001.wav", "1 id10003/na8-QEFmj44/00003.wav"]


@pytest.fixture(scope="module")
def voxceleb1(clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voxceleb1")
    (root / "iden_split.txt").write_text("\n".join(IDEN) + "\n")
    words = iter(["yes", "no", "go", "hello there", "bed"])
    for line in IDEN[:5]:
        rel = line.split()[1]
        zip_dir = "vox1_test_wav" if rel.startswith("id10270") else "vox1_dev_wav"
        dst = root / zip_dir / "wav" / rel
        put(clips[next(words)], dst.with_suffix(".m4a") if rel.startswith("id10002") else dst)
    put(clips["dog"], root / "vox1_dev_wav" / "wav" / "id10001" / "1zcIwhmdeo4" / "00009.wav")
    return root


def test_voxceleb1_identification(voxceleb1):
    scan = run_recipe("voxceleb1", voxceleb1)
    assert scan.labels == ["id10001", "id10002", "id10003", "id10270"]
    codes = {"1": "train", "2": "valid", "3": "test"}
    expected = {line.split()[1][:-4]: codes[line[0]] for line in IDEN[:5]}
    got = {f"{i.speaker}/{i.extra['video']}/{i.extra['utterance']}": i.split for i in scan.items}
    assert got == expected and all(i.labels == (i.speaker,) for i in scan.items)
    assert next(i for i in scan.items if i.speaker == "id10002").path.suffix == ".m4a"
    assert scan.report["missing_examples"] == ["id10003/na8-QEFmj44/00003.wav"] and scan.report["unlisted_files"] == 1


def test_voxceleb1_split_file_errors(tmp_path):
    assert "iden_split.txt not found" in error_of("voxceleb1", tmp_path)
    (tmp_path / "iden_split.txt").write_text("1 id10001/1zcIwhmdeo4/00001.wav\n4 id10001/1zcIwhmdeo4/00002.wav\n")
    assert "iden_split.txt:2:" in error_of("voxceleb1", tmp_path)
    assert "split_file" in error_of("voxceleb1", tmp_path, split_file="meta/none.txt")


def test_voxceleb1_builds(voxceleb1, tmp_path):
    index = build_shards("voxceleb1", voxceleb1, tmp_path / "out")
    assert index["labels"] == ["id10001", "id10002", "id10003", "id10270"]
    assert {s: v["samples"] for s, v in index["splits"].items()} == {"train": 2, "valid": 1, "test": 2}
    meta = sample_json(tmp_path / "out", "test", "id10270-5r0dWxy17C8-00001")
    assert meta["labels"] == ["id10270"] and meta["label_ids"] == [3] and meta["speaker"] == "id10270"


# ---------------------------------------------------------------- IEMOCAP

EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
EVALUATORS = "C-E2:\tNeutral;\t()\nC-F1:\tNeutral;\t(curious)\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
# per session: (utterance suffix, emotion); the dialog is SesNNF_impro01
TURNS = [("F000", "neu"), ("M000", "exc"), ("F001", "ang"), ("M001", "fru"), ("F002", "sad"), ("M002", "xxx"),
         ("M003", "hap")]


def turn_line(utt: str, emotion: str, t: float) -> str:
    return f"[{t:.4f} - {t + 1.9456:.4f}]\t{utt}\t{emotion}\t[2.5000, 3.0000, 2.0000]\n{EVALUATORS}"


@pytest.fixture(scope="module")
def iemocap(clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("IEMOCAP_full_release")
    voices = [clips[w] for w in ("yes", "no", "go", "hello there", "bed", "dog", "learn")]
    for n in range(1, 6):
        session, dialog = root / f"Session{n}", f"Ses0{n}F_impro01"
        evaluations = session / "dialog" / "EmoEvaluation"
        (evaluations / "Categorical").mkdir(parents=True)
        (evaluations / "Categorical" / f"{dialog}_e2_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
        text = EVAL_HEADER + "".join(turn_line(f"{dialog}_{s}", e, 6.2901 + 4 * i) for i, (s, e) in enumerate(TURNS))
        (evaluations / f"{dialog}.txt").write_text(text)
        for i, (suffix, _) in enumerate(TURNS):
            if (n, suffix) != (5, "M003"):  # one labelled utterance without its wav
                put(voices[i], session / "sentences" / "wav" / dialog / f"{dialog}_{suffix}.wav")
    return root


def test_iemocap_four_classes_folds_speakers(iemocap):
    scan = run_recipe("iemocap", iemocap)
    assert scan.labels == ["neutral", "happy", "angry", "sad"]
    names = {"neu": "neutral", "exc": "happy", "hap": "happy", "ang": "angry", "sad": "sad"}
    expected = {f"Ses0{n}F_impro01_{s}": ((names[e],), n, f"Ses0{n}{s[0]}") for n in range(1, 6)
                for s, e in TURNS if e in names and (n, s) != (5, "M003")}
    assert {i.key: (i.labels, i.fold, i.speaker) for i in scan.items} == expected
    assert {i.split for i in scan.items} == {"train"}
    assert scan.report["left_out_labels"] == {"fru": 5, "xxx": 5} and scan.report["missing_audio"] == 1
    assert scan.report["folds"] == {"1": 5, "2": 5, "3": 5, "4": 5, "5": 4}
    assert {i.fold for i in run_recipe("iemocap", iemocap, {"sessions": "2,4"}).items} == {2, 4}


def test_iemocap_errors(iemocap, tmp_path):
    shutil.copytree(iemocap / "Session1", tmp_path / "Session1")
    assert "Session2" in error_of("iemocap", tmp_path)
    assert "sessions='6'" in error_of("iemocap", tmp_path, sessions=6)
    txt = tmp_path / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    txt.write_text(txt.read_text().replace("\tang\t[2.5000, 3.0000, 2.0000]", "\tang\t[2.5000, 3.0000]"))
    assert "Ses01F_impro01.txt:13:" in error_of("iemocap", tmp_path, sessions=1)
    txt.write_text(txt.read_text().replace("[14.2901 - ", "[14.2901 Ses"))
    assert "Ses01F_impro01.txt:13:" in error_of("iemocap", tmp_path, sessions=1)


def test_iemocap_builds(iemocap, tmp_path):
    index = build_shards("iemocap", iemocap, tmp_path / "out", options={"sessions": "1,2"})
    assert index["splits"]["train"]["labels"] == {"angry": 2, "happy": 4, "neutral": 2, "sad": 2}
    assert index["report"]["left_out"] == 4
    meta = sample_json(tmp_path / "out", "train", "Ses02F_impro01_M000")
    assert (meta["labels"], meta["label_ids"], meta["fold"], meta["speaker"]) == (["happy"], [1], 2, "Ses02M")
    assert meta["emotion"] == "exc" and meta["vad"] == [2.5, 3.0, 2.0]
