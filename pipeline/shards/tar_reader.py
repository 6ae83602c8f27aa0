"""A sequential reader of plain (uncompressed) tars that parses only what the loader needs.

Why not the stdlib's `tarfile`, the well-kept library: streaming a shard through it cost
0.15-0.17 ms of CPU a sample (5 members), most of it `TarInfo.frombuf` decoding every header
field in Python (mode, uid, gid, mtime, uname, gname, devmajor, devminor, ...) that the loader
never looks at (`bench/loader.py`'s "tarfile" row and a cProfile of the loader, issue 19). This
reader takes from each 512-byte header only the name (with the ustar prefix), the size (octal,
or base-256 when the top bit is set, as tarfile accepts) and the type, after checking the
checksum as tarfile does (the unsigned or the signed sum); see `TarReader` for the numbers.

It reads forward only, so it serves a local file and a stream that cannot seek (webdataset's
gopen) alike: members the caller does not read are skipped by seeking on a file, read and
discarded in bounded chunks on a stream. What tarfile derives from extended headers is
applied the same way: a pax header ('x', or a global 'g' for all the members after it) may
override a member's ``path`` and ``size``; a GNU long name ('L') replaces the header's name
(a pax ``path`` takes precedence). Tars written by tarfile give the same members with the
same bytes (tests/test_tar_reader.py).

It is stricter than tarfile where tarfile would take damage for the end of the archive: a bad
checksum, a field that is not a number, a header or member cut short anywhere raise
`TarFormatError`, so the caller knows the shard is damaged. A file that ends exactly at a
header boundary, without the end-of-archive blocks, reads as complete, as with tarfile. An
extended header larger than MAX_EXTENDED_BYTES is refused (tarfile would read it all into
memory), and so are GNU sparse members, which prepare never writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, NamedTuple

from pipeline.errors import PipelineError

BLOCK = 512
MAX_EXTENDED_BYTES = 2**20  # a pax or GNU long-name header's data (tarfile's own hold ~100 B)
SKIP_CHUNK = 2**20  # bytes read at a time when skipping a member on a stream
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = frozenset(b"0\x007")  # tarfile's REGULAR_TYPES, less GNU sparse ('S')
# Types with no data blocks whatever their size field says (tarfile skips the data of
# regular files and of types it does not know, not of these).
_NO_DATA = frozenset(b"123456")  # links, devices, directories, fifos
_LONG_NAME, _LONG_LINK, _PAX, _PAX_GLOBAL, _SOLARIS_PAX, _SPARSE = b"LKxgXS"


class TarFormatError(PipelineError):
    """A tar is malformed or cut short: the members read so far are intact, no more follow."""


class TarMember(NamedTuple):
    """A regular file of the archive: its name (after any pax or GNU long name) and size."""

    name: str
    size: int


class TarReader:
    """The regular members of a plain tar read from `stream`, in order (`members`); the bytes
    of the member just yielded are `read()`, else skipped unread on the next step.

    Directories, links, devices and fifos are passed over, as are the data of types tarfile
    does not know (which it does not count as regular either).

    Measured, `tar_samples` over a prepared set of 76 samples (CPU time a sample, best of 10,
    2-core machine): shards without pax headers tarfile 0.145-0.154 ms, this reader
    0.042-0.044 ms; shards with a pax header before every member (a float mtime) tarfile
    0.29-0.31 ms, this reader 0.071-0.083 ms (issue 19)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        try:
            self._seekable = stream.seekable()
        except (AttributeError, OSError):
            self._seekable = False
        self._unread = 0  # bytes of the current member not yet read by the caller
        self._padding = 0  # bytes after them up to the next block boundary
        self._offset = 0  # of the next header, for messages

    def members(self) -> Iterator[TarMember]:
        """Each regular member in turn, until the end-of-archive block or the end of the
        file at a header boundary; `TarFormatError` on damage or compression."""
        pax_global: dict[str, str] = {}
        pax: dict[str, str] = {}
        long_name: str | None = None
        while (header := self._next_header()) is not None:
            kind = header[156]
            size = _number(header, 124, 136, "size")
            if kind in _REGULAR and not (kind == 0 and _v7_directory(header)):
                name = long_name if long_name is not None else _header_name(header)
                if pax_global or pax:
                    name, size = _apply_pax({**pax_global, **pax}, name, size)
                pax, long_name = {}, None
                self._start(size)
                yield TarMember(name, size)
            elif kind in (_PAX, _SOLARIS_PAX, _PAX_GLOBAL):
                records = _pax_records(self._extended(size))
                if any(key.startswith("GNU.sparse.") for key in records):
                    raise TarFormatError(f"a GNU sparse member at byte {self._offset}: "
                                         f"not supported")
                (pax_global if kind == _PAX_GLOBAL else pax).update(records)
            elif kind in (_LONG_NAME, _LONG_LINK):
                data = self._extended(size)
                if kind == _LONG_NAME:
                    end = data.find(0)
                    long_name = _text(data[:end if end >= 0 else len(data)])
            elif kind == _SPARSE:
                raise TarFormatError(f"a GNU sparse member at byte {self._offset}: not supported")
            else:  # not a regular file: passed over with its data, if it has any
                pax, long_name = {}, None
                self._start(0 if kind in _NO_DATA or kind == 0 else size)

    def read(self) -> bytes:
        """The whole data of the member just yielded (once; later calls give b"")."""
        size, self._unread = self._unread, 0
        data = self._read(size)
        if len(data) < size:
            raise TarFormatError(f"cut short in the member ending at byte "
                                 f"{self._offset - self._padding} ({len(data)} of its "
                                 f"{size} bytes there)")
        return data

    def _start(self, size: int) -> None:
        self._unread, self._padding = size, -size % BLOCK
        self._offset += size + self._padding

    def _extended(self, size: int) -> bytes:
        """The data of an extended header (pax records or a GNU long name)."""
        if size > MAX_EXTENDED_BYTES:
            raise TarFormatError(f"an extended header of {size} bytes at byte {self._offset} "
                                 f"(at most {MAX_EXTENDED_BYTES})")
        self._start(size)
        return self.read()

    def _next_header(self) -> bytes | None:
        """The next header block past the current member's data; None at the end."""
        skip = self._unread + self._padding
        self._unread = self._padding = 0
        if skip > SKIP_CHUNK:
            self._skip(skip)
            skip = 0
        block = self._read(skip + BLOCK)
        if len(block) == skip:
            if self._offset == 0:
                raise TarFormatError("empty file")
            return None  # ends at a header boundary: complete, as tarfile reads it
        if len(block) < skip + BLOCK:
            raise TarFormatError(f"cut short at byte {self._offset - skip + len(block)} "
                                 f"(a header or a member's data is incomplete)")
        header = block[skip:]
        offset, self._offset = self._offset, self._offset + BLOCK
        if header == _ZERO_BLOCK:
            return None
        stored = _number(header, 148, 156, "checksum")
        unsigned = 256 + sum(header) - sum(header[148:156])
        if stored != unsigned and stored != unsigned - 256 * _high_bytes(header):
            what = "not a tar (compressed?)" if offset == 0 else "bad checksum"
            raise TarFormatError(f"header at byte {offset}: {what}")
        return header

    def _skip(self, count: int) -> None:
        """Pass over `count` bytes, raising if the file ends first."""
        if self._seekable:
            self._stream.seek(count - 1, 1)
            if not self._stream.read(1):
                raise TarFormatError(f"cut short before byte {self._offset}")
            return
        while count:
            chunk = self._stream.read(min(count, SKIP_CHUNK))
            if not chunk:
                raise TarFormatError(f"cut short before byte {self._offset}")
            count -= len(chunk)

    def _read(self, count: int) -> bytes:
        """`count` bytes, fewer only at the end of the file (a pipe may answer in pieces)."""
        data = self._stream.read(count)
        while len(data) < count:
            more = self._stream.read(count - len(data))
            if not more:
                break
            data += more
        return data


def _header_name(header: bytes) -> str:
    """The member name in a ustar header: prefix/name, as tarfile joins them."""
    end = header.find(0, 0, 100)
    name = _text(header[:end if end >= 0 else 100])
    if header[345]:
        end = header.find(0, 345, 500)
        name = _text(header[345:end if end >= 0 else 500]) + "/" + name
    return name


def _v7_directory(header: bytes) -> bool:
    """Whether a header of type NUL names a directory, by its trailing slash (old V7 tars)."""
    return header[:100].split(b"\0", 1)[0].endswith(b"/")


def _apply_pax(records: dict[str, str], name: str, size: int) -> tuple[str, int]:
    """`name` and `size` with a pax ``path`` and ``size`` applied, as tarfile applies them."""
    if "path" in records:
        name = records["path"].rstrip("/")
    if "size" in records:
        try:
            size = int(records["size"])
        except ValueError:
            raise TarFormatError(f"a pax size that is not a number: {records['size']!r}") from None
        if size < 0:
            raise TarFormatError(f"a negative pax size: {size}")
    return name, size


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``"%d %s=%s\\n"`` records of a pax header's data, up to its NUL padding."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position]:
        space = data.find(b" ", position)
        try:
            length = int(data[position:space])
        except ValueError:
            raise TarFormatError("a pax record without a length") from None
        record = data[space + 1:position + length]
        if space < 0 or length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError(f"a malformed pax record: {data[position:position + 60]!r}")
        keyword, value = record[:-1].split(b"=", 1)
        records[_text(keyword)] = _text(value)
        position += length
    return records


def _number(header: bytes, start: int, stop: int, what: str) -> int:
    """A numeric header field: octal digits (space or NUL ended), or base-256 big-endian
    when its first byte has the top bit set (0x80 positive, 0xff negative), as tarfile's
    `nti` reads it; negative or malformed fields raise."""
    first = header[start]
    if first & 0x80:
        if first not in (0x80, 0xFF):
            raise TarFormatError(f"the {what} field is malformed: {header[start:stop]!r}")
        value = int.from_bytes(header[start + 1:stop], "big")
        if first == 0xFF:
            value -= 256 ** (stop - start - 1)
    else:
        end = header.find(0, start, stop)
        digits = header[start:end if end >= 0 else stop].strip()
        try:
            value = int(digits, 8) if digits else 0
        except ValueError:
            raise TarFormatError(f"the {what} field is not a number: "
                                 f"{header[start:stop]!r}") from None
    if value < 0:
        raise TarFormatError(f"the {what} field is negative: {value}")
    return value


def _high_bytes(header: bytes) -> int:
    """How many bytes outside the checksum field are >= 0x80 (what the signed sum differs by)."""
    return sum(byte >= 0x80 for byte in header[:148] + header[156:])


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
