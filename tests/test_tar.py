"""format.tar_members, the shard reader's tar parser: the members tarfile reads, errors where a tar is cut, keys."""

from __future__ import annotations

import io
import tarfile

import pytest

from maeast.shards.format import TarFormatError, member_key, tar_members

NAMES = ["a.json", "k" * 140 + ".flac", "dir/" + "d" * 120 + "/x.wav", "é-clé.json", "empty.json"]


def make_tar(fmt: int, names=NAMES) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name in names:
            data = b"" if name.startswith("empty") else name.encode() * 7
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_are_what_tarfile_reads(fmt):
    raw = make_tar(fmt)
    expected = [(m.name, tarfile.open(fileobj=io.BytesIO(raw)).extractfile(m.name).read())
                for m in tarfile.open(fileobj=io.BytesIO(raw)) if m.isfile()]
    assert list(tar_members(io.BytesIO(raw))) == expected
    assert [n for n, _ in expected] == NAMES


def test_ustar_prefix_names():
    names = ["p" * 90 + "/" + "q" * 60 + ".json"]
    raw = make_tar(tarfile.USTAR_FORMAT, names)
    assert [n for n, _ in tar_members(io.BytesIO(raw))] == names


def test_a_cut_tar_yields_the_whole_members_then_raises():
    raw = make_tar(tarfile.GNU_FORMAT)
    whole = list(tar_members(io.BytesIO(raw)))
    cut = raw.rfind(b"empty.json") - 600  # inside the member before the last one's header
    got = []
    with pytest.raises(TarFormatError, match="truncated"):
        for member in tar_members(io.BytesIO(raw[:cut])):
            got.append(member)
    assert got == whole[: len(got)] and 0 < len(got) < len(whole)


def test_a_garbled_header_raises():
    raw = bytearray(make_tar(tarfile.GNU_FORMAT))
    second = raw.find(b"a.json") + 0
    raw[second + 2] ^= 0xFF  # a byte of the name: the stored checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(raw))))


def test_rejected_members_are_skipped_unread():
    raw = make_tar(tarfile.GNU_FORMAT)
    kept = list(tar_members(io.BytesIO(raw), keep=lambda name: name.endswith(".json")))
    assert kept == [m for m in tar_members(io.BytesIO(raw)) if m[0].endswith(".json")]
    assert [n for n, _ in kept] == ["a.json", "é-clé.json", "empty.json"]


def test_member_keys_are_webdatasets():
    from webdataset.tariterators import base_plus_ext
    for name in ["k.flac", "k.x.json", "d/k.json", "d.x/k.y.wav", "a/.b", "d/b/c.d", "k_-1.json"]:
        assert member_key(name) == base_plus_ext(name), name
    assert member_key("README") == ("README", "") and member_key("d.x/k") == ("d.x/k", "")  # webdataset: None
