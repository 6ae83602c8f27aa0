"""`pipeline.shards.tar_reader` against the stdlib's tarfile, and the loader's tar stage on
damaged shards: the same members with the same bytes from every tar flavour tarfile writes,
from a file and from a stream that cannot seek; a damaged shard raises, and `tar_samples`
keeps the samples before the damage and drops the one being read."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.loader.samples import LoaderStats, tar_samples
from pipeline.shards.tar_reader import (
    MAX_EXTENDED_BYTES,
    SKIP_CHUNK,
    TarFormatError,
    TarReader,
)

LONG = "d" * 60 + "/" + "e" * 70 + ".clip.mp4"  # 135 characters, a ustar prefix fits


class Stream(io.RawIOBase):
    """A pipe-like stream: no seeking, and each read answers at most 700 bytes."""

    def __init__(self, data: bytes) -> None:
        self._data, self._position = data, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size < 0 else min(size, 700)
        chunk = self._data[self._position:self._position + size]
        self._position += len(chunk)
        return chunk


def regular(name: str, data: bytes, mtime: float = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    return info, data


def write_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], tar_format: int,
              **options: object) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, **options) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def of_type(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def payload(index: int, size: int) -> bytes:
    return bytes((index * 7 + i) % 251 for i in range(size))


def samples(count: int, mtime: float = 0) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [regular(f"k{index:03d}.{name}", payload(index, size), mtime)
            for index in range(count)
            for name, size in (("json", 37), ("clip.mp4", 1500), ("txt", 512), ("mel.npy", 0))]


def rewrite(tar: bytes, header: int, start: int, field: bytes) -> bytes:
    """`tar` with `field` written at byte `start` of the header at byte `header`, its
    checksum recomputed."""
    data = bytearray(tar)
    data[header + start:header + start + len(field)] = field
    data[header + 148:header + 156] = b"        "
    data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + 512])
    return bytes(data)


def pax_size_override() -> bytes:
    """A member whose header says 0 bytes and whose pax header says 1500."""
    info, data = regular("big.clip.mp4", payload(1, 1500))
    info.pax_headers = {"size": "1500"}
    tar = write_tar([(info, data), *samples(1)], tarfile.PAX_FORMAT)
    return rewrite(tar, 1024, 124, b"00000000000\0")  # after the pax header and its data


FLAVOURS: dict[str, Callable[[], bytes]] = {
    "ustar": lambda: write_tar(samples(3), tarfile.USTAR_FORMAT),
    "ustar prefix": lambda: write_tar([regular(LONG, b"x" * 10), *samples(1)],
                                      tarfile.USTAR_FORMAT),
    "pax float mtime": lambda: write_tar(samples(3, mtime=1.5), tarfile.PAX_FORMAT),
    "gnu long names": lambda: write_tar(
        [regular("n" * 150 + f".{index}.txt", payload(index, 700)) for index in range(3)]
        + [of_type("l" * 120, tarfile.SYMTYPE, "t" * 130)], tarfile.GNU_FORMAT),
    "pax path override": lambda: write_tar(
        [regular("p" * 150 + ".json", b"{}"), regular("sample.ünïcode.txt", b"text"),
         *samples(1)], tarfile.PAX_FORMAT),
    "pax size override": pax_size_override,
    "pax global header": lambda: write_tar(samples(2), tarfile.PAX_FORMAT,
                                           pax_headers={"comment": "made by a test"}),
    "directories and links": lambda: write_tar(
        [of_type("k000", tarfile.DIRTYPE), *samples(1)[:2],
         of_type("k000.link", tarfile.SYMTYPE, "k000.json"),
         of_type("k000.hard", tarfile.LNKTYPE, "k000.json"),
         of_type("fifo", tarfile.FIFOTYPE), *samples(2)[4:]], tarfile.USTAR_FORMAT),
    "base-256 size": lambda: rewrite(write_tar(samples(1), tarfile.GNU_FORMAT), 0, 124,
                                     b"\x80" + (37).to_bytes(11, "big")),
}


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(info.name, tar.extractfile(info).read())  # type: ignore[union-attr]
                for info in tar if info.isreg()]


def reader_members(stream: io.IOBase) -> list[tuple[str, bytes]]:
    reader = TarReader(stream)  # type: ignore[arg-type]
    return [(member.name, reader.read()) for member in reader.members()]


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_the_reader_yields_what_tarfile_yields(flavour: str, tmp_path: Path) -> None:
    data = FLAVOURS[flavour]()
    expected = tarfile_members(data)
    assert len(expected) >= 2
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    with open(path, "rb") as file:
        assert reader_members(file) == expected, "from a file"
    assert reader_members(Stream(data)) == expected, "from a stream"


@pytest.mark.parametrize("seekable", [True, False])
def test_members_left_unread_are_skipped(seekable: bool) -> None:
    """Skipping a member (by seeking, or reading and discarding) lands on the next header,
    a large one (skipped in chunks) too."""
    large = regular("k001.big", b"\1" * (SKIP_CHUNK + 1000), mtime=1.5)
    data = write_tar([*samples(2, mtime=1.5), large, *samples(4, mtime=1.5)[5:]],
                     tarfile.PAX_FORMAT)
    assert "k001.big" not in [name for name, _ in tarfile_members(data)[::3]]  # skipped
    stream = io.BytesIO(data) if seekable else Stream(data)
    reader = TarReader(stream)
    read = [(member.name, reader.read()) for index, member in enumerate(reader.members())
            if index % 3 == 0]
    assert read == tarfile_members(data)[::3]


def corrupted(how: str) -> bytes:
    """Three samples of two members (600 and 1024 bytes); the fourth member, k001.txt,
    damaged."""
    tar = write_tar([regular(f"k{index:03d}.{name}", payload(index, size))
                     for index in range(3) for name, size in (("json", 600), ("txt", 1024))],
                    tarfile.USTAR_FORMAT)
    header = 3 * 512 + 2 * 1024 + 1024  # three headers, two jsons' and a txt's blocks
    assert tar[header:header + 8] == b"k001.txt"
    if how == "bad checksum":
        return tar[:header + 1] + b"1" + tar[header + 2:]
    if how == "size not octal":
        return rewrite(tar, header, 124, b"00000001x00\0")
    if how == "header cut short":
        return tar[:header + 300]
    return tar[:header + 512 + 512]  # its data cut short at a block boundary


@pytest.mark.parametrize(("how", "error"), [
    ("bad checksum", "bad checksum"), ("size not octal", "size field is not a number"),
    ("header cut short", "cut short"), ("data cut short", "cut short in the member")])
def test_a_damaged_shard_is_corrupt_and_keeps_the_samples_before(how: str, error: str,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    path.write_bytes(corrupted(how))
    with open(path, "rb") as file, pytest.raises(TarFormatError, match=error):
        reader_members(file)
    stats = LoaderStats()
    kept = list(tar_samples([str(path)], stats, {}))
    assert [sample["__key__"] for sample in kept] == ["k000"]
    assert kept[0]["txt"] == payload(0, 1024)
    assert stats.findings == [("corrupt_shards", str(path)),
                              ("skipped_samples", f"{path}/k001")], stats.errors


def test_a_tar_ending_at_a_header_boundary_is_complete() -> None:
    """Without its end-of-archive blocks a tar reads as tarfile reads it: complete."""
    data = write_tar(samples(2), tarfile.USTAR_FORMAT).rstrip(b"\0")
    data += bytes(-len(data) % 512)
    assert reader_members(Stream(data)) == tarfile_members(data)


@pytest.mark.parametrize("data", [b"", b"\x1f\x8b\x08" + bytes(600), bytes(range(256)) * 4],
                         ids=["empty", "gzip", "random"])
def test_what_is_not_a_plain_tar_raises(data: bytes) -> None:
    with pytest.raises(TarFormatError):
        reader_members(io.BytesIO(data))


def test_an_extended_header_too_large_raises_before_reading_it() -> None:
    info = tarfile.TarInfo("x")
    info.type, info.size = tarfile.XHDTYPE, MAX_EXTENDED_BYTES + 1
    with pytest.raises(TarFormatError, match="extended header"):
        reader_members(io.BytesIO(info.tobuf(tarfile.USTAR_FORMAT)))
