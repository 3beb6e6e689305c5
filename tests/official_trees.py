"""Tiny trees of the official corpora in their exact layouts and metadata formats, for tests.

Audio is real speech (espeak-ng) and sox noise/plucks, made once per session and copied or converted.
The fixtures are imported by the recipe tests and the fine-tuning tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from maeast.errors import MaeastError
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


CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"),
           ("/m/02zsn", "Female speech, woman speaking"), ("/m/0ytgt", "Child speech, kid speaking"),
           ("/m/04rlf", "Music"), ("/m/0342h", "Guitar")]


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


EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


EVALUATORS = "C-E2:\tNeutral;\t()\nC-F1:\tNeutral;\t(curious)\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"


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

