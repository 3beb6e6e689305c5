"""Recipes for the official corpora, on tiny trees in their exact layouts and metadata formats.

Audio is real speech (espeak-ng) and sox noise/plucks, made once per session and copied or converted.
Expected labels, splits and folds are read back from the metadata files the tests write.
"""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from maeast.shards.build import build_shards
from maeast.shards.recipes import run_recipe
from tests.official_trees import (CLASSES, ESC_HEADER, ESC_ROWS, IDEN, SEGMENTS, TURNS, error_of, sample_json,
                                   tf_which_set, write_audioset_meta)


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

