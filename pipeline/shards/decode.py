"""The one decoder of shard members and the caps on what a reader holds of one (the checks a
decoded sample must pass are `validate`'s).

Safety: webdataset's default decoders unpickle ``.pyd``/``.pickle``/``.pth`` members, so a
shard from an untrusted source could run code. `decode_member` is the one decoder of this
project; it reads only the schema's member types (`schema`), loads ``.npy`` with
``allow_pickle=False``, restricts PIL and FFmpeg to the one format the extension names, and
refuses everything else unread."""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

import av
import numpy as np
import simplejpeg
from av.video.reformatter import VideoReformatter
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.shards.schema import (
    CLIP_MEMBERS,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SCHEMA_MEMBERS,
    expected_from_meta,
)

# Bounds on what a reader holds of one member, so a hostile or broken shard cannot make a
# loader worker (or omni inspect) allocate gigabytes. Readers check a member's declared tar size
# against `member_cap` before reading it, decoders check declared picture sizes and counts before
# decoding, and no member may hold, or decode to, more than MAX_MEMBER_BYTES whatever a manifest
# or a json says (a default-sized raw clip is 0.6 MB).
MAX_MEMBER_BYTES = 64 * 2**20
# json and txt: a json is under 1 kB and prepare caps a window's text at 4096 bytes.
MAX_TEXT_BYTES = 64 * 2**10
# A media member of a shard set of known sizes may hold twice its raw pixel bytes plus this:
# H.264 and JPEG stay far below raw, an npy exceeds it by its header.
_CAP_SLACK = 64 * 2**10

_NPY_MAGIC = b"\x93NUMPY"

# No decoder for the demuxer's own use. Opening a container probes its streams
# (avformat_find_stream_info), which opens a decoder of its own and decodes the clip's first
# frame to learn its pixel format; `_h264_decoder` decodes every frame anyway, so that was a
# decoder set up and an IDR frame decoded twice a clip: 12 % of the loader's instructions, 8 % of
# its CPU (issue 19, `bench/loader.py`). With no decoder allowed the probe reads the header and
# the first packet only; the stream's size, codec and parameter sets come from the header as
# before. FFmpeg logs the refusal where its logging is switched on (PyAV leaves it off).
NO_PROBE_DECODER = {"codec_whitelist": ""}

# Per thread, kept across clips: an H.264 decoder (`_h264_decoder`) and a swscale context
# (`_reformatter`).
_KEPT = threading.local()
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}


class UnsafeMemberError(PipelineError):
    """A member whose type this schema does not read; it was left undeserialised."""


class CorruptMemberError(PipelineError):
    """A member of a known type whose bytes do not decode; its sample must be dropped."""


def member_type(name: str) -> str:
    """The type of a member, i.e. its last extension, lower case ("clip.mp4" -> "mp4")."""
    return name.rsplit(".", 1)[-1].lower()


def member_shape(name: str, expected: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The array a media member of a shard set with sizes `expected` decodes to; None for
    json, txt and names outside the schema."""
    if name == MEMBER_MEL:
        return (expected["n_mels"], expected["audio_frames"])
    if name == MEMBER_IMAGE:
        return (expected["image_size"], expected["image_size"], 3)
    if name in CLIP_MEMBERS:
        return (expected["video_frames"], expected["video_size"], expected["video_size"], 3)
    return None


def member_cap(name: str, expected: Mapping[str, Any] | None) -> int:
    """The most bytes schema member `name` may declare in its tar header to be read at all.

    json and txt: MAX_TEXT_BYTES. A media member of a shard set of known sizes (`expected`):
    twice its raw bytes plus a little, at most MAX_MEMBER_BYTES; with unknown sizes (no
    manifest), MAX_MEMBER_BYTES. With known sizes, a loader's shuffle buffer full of hostile
    samples so holds at most about twice what it holds of genuine ones."""
    if name in (MEMBER_JSON, MEMBER_TEXT):
        return MAX_TEXT_BYTES
    shape = None if expected is None else member_shape(name, expected)
    if shape is None:
        return MAX_MEMBER_BYTES
    raw = math.prod(max(0, size) for size in shape) * (2 if name == MEMBER_MEL else 1)
    return min(MAX_MEMBER_BYTES, 2 * raw + _CAP_SLACK)


def oversized_member(name: str, size: int, expected: Mapping[str, Any] | None) -> str | None:
    """Why schema member `name`, declaring `size` bytes, must be skipped unread (its sample is
    lost), or None when it is within `member_cap`."""
    cap = member_cap(name, expected)
    if size <= cap:
        return None
    return (f"member {name!r} declares {size} bytes, more than the {cap} such a member may "
            f"hold; skipped unread")


def decode_member(name: str, data: bytes, expected: Mapping[str, Any] | None = None,
                  out: np.ndarray | None = None) -> Any:
    """Decode one member by its name (`_DECODERS`); the only decoder shards are ever read with.
    Any other type (notably ``pyd``, ``pickle``, ``pth``, ``pt``) raises UnsafeMemberError
    without reading the bytes; bytes that do not decode raise CorruptMemberError.

    Sizes are checked before pixels are decoded, so a small hostile member cannot expand into
    gigabytes: an image's or a clip stream's declared width and height (and a clip's declared
    frame count) must be those of `expected` (`expected_from_config`), frames past the expected
    count stop the decode, and nothing may decode to more than MAX_MEMBER_BYTES. Without
    `expected` only that last bound applies: readers of untrusted shards pass it
    (`decode_sample` does).

    `out`: memory (a row of the loader's batch, `pipeline.loader.batches.BatchSlots`) that a
    member of its size is decoded into and returned. A JPEG takes a C-contiguous uint8
    (H, W, 3), an npy array one of its dtype and shape; for a clip a uint8 buffer:
    A (3, T, H, W) one takes the clip in RGB, channels first, returned as its (T, H, W, 3)
    view. A `clip.mp4` may instead go into an I420 one, (T, 3H/2, W) (`i420_shape`): each
    frame's yuv420p planes as the decoder gives them, no pixel conversion on the CPU
    (`pipeline.normalize.i420_to_rgb` converts them on the device), returned as it is. A clip
    of another size is decoded into memory of its own, as without `out`: RGB (T, H, W, 3)."""
    kind = member_type(name)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnsafeMemberError(f"member {name!r}: type {kind!r} is not part of shard schema "
                                f"v1 and is never deserialised")
    shape = None if expected is None else member_shape(name, expected)
    try:
        if out is not None and kind in _INTO_OUT:
            return decoder(data, shape, out=out)
        return decoder(data, shape)
    except CorruptMemberError as err:
        raise CorruptMemberError(f"member {name!r}: {err}") from err
    except Exception as err:  # any library's complaint about the bytes means a broken member
        raise CorruptMemberError(f"member {name!r} does not decode as {kind}: "
                                 f"{type(err).__name__}: {err}") from err


def _decode_json(data: bytes, shape: tuple[int, ...] | None) -> dict[str, Any]:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise CorruptMemberError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _decode_text(data: bytes, shape: tuple[int, ...] | None) -> str:
    return data.decode("utf-8")


def _decode_npy(data: bytes, shape: tuple[int, ...] | None,
                out: np.ndarray | None = None) -> np.ndarray:
    # np.load would also open .npz archives (and with allow_pickle, pickles): accept .npy only.
    if not data.startswith(_NPY_MAGIC):
        raise CorruptMemberError("not an .npy array (bad magic bytes)")
    version = tuple(data[6:8])
    if version not in ((1, 0), (2, 0)):
        raise CorruptMemberError(f".npy format version {version} is not read (1.0 and 2.0 are)")
    width = 2 if version == (1, 0) else 4  # bytes of the header's length
    start = 8 + width + int.from_bytes(data[8:8 + width], "little")
    declared, fortran_order, dtype = _npy_header(data[:start])
    size = math.prod(declared) * dtype.itemsize
    if size > MAX_MEMBER_BYTES:
        raise CorruptMemberError(f"declares a {dtype} array of shape {declared}, {size} bytes, "
                                 f"more than {MAX_MEMBER_BYTES}")
    # The array from the bytes after the header (np.load would parse the header again, the
    # costlier half of loading a mel), copied once into memory of its own and writable, as
    # np.load's; a member shorter than its header declares raises ValueError.
    flat = np.frombuffer(data, dtype, count=math.prod(declared), offset=start)
    array = (flat.reshape(declared[::-1]).transpose() if fortran_order
             else flat.reshape(declared))  # a view of the bytes, in either order
    if out is not None and _fits(out, declared, dtype):  # an RGB clip, channels first
        np.copyto(out, array.transpose(3, 0, 1, 2))
        return out.transpose(1, 2, 3, 0)
    if out is not None and out.dtype == dtype and out.shape == declared:  # a mel, its row
        np.copyto(out, array)
        return out
    return array.copy(order="K")


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran order, dtype) of an .npy member's `header` (magic to the end of its
    dictionary), kept for the next member with the same header: numpy parses the dictionary
    with `ast.literal_eval`, which compiles it, and a shard set's mels share one header
    (`bench/loader.py`, issue 19: about 40 us a sample)."""
    buffer = BytesIO(header)
    version = np.lib.format.read_magic(buffer)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    declared, fortran_order, dtype = read(buffer)
    if buffer.tell() != len(header):
        raise CorruptMemberError("the .npy header's length disagrees with its dictionary")
    if dtype.hasobject:  # np.load would unpickle them (allow_pickle=True) or refuse
        raise CorruptMemberError(f"holds Python objects ({dtype}); never unpickled")
    return tuple(declared), bool(fortran_order), dtype


def _decode_image(kind: str, data: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    with Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
        _check_picture(*image.size, shape)  # from the header: nothing is decoded yet
        # (H, W, 3), writable (asarray is read-only); a JPEG of RGB needs no convert (a copy).
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _decode_jpeg(data: bytes, shape: tuple[int, ...] | None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """A JPEG by libjpeg-turbo's TurboJPEG API (simplejpeg), straight into one (H, W, 3) array:
    PIL decodes into its own 4-byte pixels and copies them out twice (`bench/loader.py`,
    issue 19: 0.14 against 0.28 ms a 224x224 picture), with the same IDCT and upsampling, so
    the same pixels (tests compare). A CMYK or YCCK JPEG goes to PIL, whose conversion to RGB
    TurboJPEG lacks. A picture libjpeg warns about (truncated, corrupt data) is corrupt.
    `out`, a C-contiguous uint8 (H, W, 3) of the picture's size (its row of the batch), is
    decoded into and returned; PIL's pictures land in memory of their own."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as err:
        raise CorruptMemberError(f"not a JPEG: {err}") from err
    _check_picture(width, height, shape)
    if colorspace not in ("YCbCr", "Gray"):
        return _decode_image("jpg", data, shape)
    into = (out is not None and out.dtype == np.uint8 and out.shape == (height, width, 3)
            and out.flags.c_contiguous)
    picture: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB",
                                                 buffer=out if into else None)
    return picture


def _check_picture(width: int, height: int, shape: tuple[int, ...] | None) -> None:
    """Refuse a picture of another size than `shape` (H, W, 3), or one over the decode bound,
    from the sizes its header declares."""
    if shape is not None and (height, width) != shape[:2]:
        raise CorruptMemberError(f"image of {width}x{height}, the shard set's images are "
                                 f"{shape[1]}x{shape[0]}")
    if width * height * 3 > MAX_MEMBER_BYTES:
        raise CorruptMemberError(f"image of {width}x{height} is larger than "
                                 f"{MAX_MEMBER_BYTES} bytes decoded")


def i420_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The (T, 3H/2, W) uint8 array of a clip's I420 frames: per frame the yuv420p frame
    buffer (as ``av.VideoFrame.to_ndarray()`` gives it): H rows of Y, then the H/2 x W/2
    values of U, then those of V, back to back (H/4 rows of W each where 4 divides H). H and
    W must be even."""
    return (frames, height * 3 // 2, width)


def _fits(out: np.ndarray, frames: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    """Whether a clip of `frames` (T, H, W, 3) and `dtype` fills `out` (3, T, H, W)."""
    return (dtype == out.dtype and len(frames) == 4
            and (frames[3], *frames[:3]) == tuple(out.shape))


def _decode_mp4(data: bytes, shape: tuple[int, ...] | None,
                out: np.ndarray | None = None) -> np.ndarray:
    # format="mp4" keeps FFmpeg from probing other demuxers (some, like HLS, open URLs).
    with av.open(BytesIO(data), "r", format="mp4", container_options=NO_PROBE_DECODER
                 ) as container:
        if len(container.streams.video) != 1:
            raise CorruptMemberError(f"expected one video stream, found "
                                     f"{len(container.streams.video)}")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise CorruptMemberError(f"expected H.264, found {stream.codec_context.name}")
        width, height = stream.width, stream.height
        if shape is not None and (height, width) != shape[1:3]:
            raise CorruptMemberError(f"frames of {width}x{height}, the shard set's clips are "
                                     f"{shape[2]}x{shape[1]}")
        limit = MAX_MEMBER_BYTES // max(1, width * height * 3)  # frames that fit the bound
        if shape is not None:
            limit = min(limit, shape[0])
        if limit < 1:
            raise CorruptMemberError(f"frames of {width}x{height} are larger than "
                                     f"{MAX_MEMBER_BYTES} bytes decoded")
        if stream.frames > limit:  # 0 when the container does not say
            raise CorruptMemberError(f"declares {stream.frames} frames, more than {limit}")
        decoder = _h264_decoder(stream.codec_context.extradata)
        reformatter = _reformatter()
        planes = (out is not None and not height % 2 and not width % 2  # views need one piece
                  and out.dtype == np.uint8 and out.shape == i420_shape(limit, height, width)
                  and out.flags.c_contiguous)
        # Channels first: the layout the batch has (`pipeline.loader.samples.collate`), so
        # the loader copies each sample's frames in one piece instead of transposing them.
        # Without expected sizes the buffer spans the decode bound, untouched past the frames.
        if planes or out is not None and _fits(out, (limit, height, width, 3),
                                               np.dtype(np.uint8)):
            clip = out
        else:
            clip = np.empty((3, limit, height, width), np.uint8)
        if planes:  # per frame Y (H, W), U and V (H/2, W/2): views of the slot
            luma = clip[:, :height]
            chroma = clip.reshape(limit, -1)[:, height * width:].reshape(
                limit, 2, height // 2, width // 2)
        count = 0
        try:
            for packet in container.demux(stream):  # the last one, empty, drains the decoder
                for frame in decoder.decode(packet):
                    if (frame.width, frame.height) != (width, height):  # the bitstream may
                        raise CorruptMemberError(  # disagree with the container
                            f"a frame of {frame.width}x{frame.height} in a stream of "
                            f"{width}x{height}")
                    if count == limit:
                        raise CorruptMemberError(f"more than {limit} frames")
                    if planes:
                        _i420(reformatter, frame, luma[count], chroma[count])
                    else:
                        _rgb_channels_first(reformatter, frame, clip[:, count])
                    count += 1
        except BaseException:
            del _KEPT.h264  # a clip that failed leaves the decoder in no known state
            raise
    if count == 0:
        raise CorruptMemberError("no decodable frames")
    if planes:  # (T, 3H/2, W): the slot itself; a shorter clip's frames, which then fail
        return clip[:count]  # `validate_sample`'s shape check (its sample is dropped)
    # (T, H, W, 3), as every clip decodes, over channels-first memory; a clip shorter than
    # its buffer is copied out of it.
    return (clip if count == limit else clip[:, :count].copy()).transpose(1, 2, 3, 0)


def _rgb_channels_first(reformatter: VideoReformatter, frame: av.VideoFrame,
                        out: np.ndarray) -> None:
    """`frame` converted to RGB by swscale (``rgb24``) into `out` (3, H, W) uint8. One swscale
    thread: by default (threads=0) every context starts a slice thread per CPU and hands each
    small frame to them, more CPU than converting it. Not planar ``gbrp``: at widths that are
    not a multiple of 16 swscale writes garbage into its last columns (tests check)."""
    packed = reformatter.reformat(frame, format="rgb24", threads=1).planes[0]
    rows = np.frombuffer(packed, np.uint8).reshape(frame.height, packed.line_size)
    np.copyto(out, rows[:, :frame.width * 3].reshape(frame.height, frame.width, 3)
              .transpose(2, 0, 1))


def _i420(reformatter: VideoReformatter, frame: av.VideoFrame, luma: np.ndarray,
          chroma: np.ndarray) -> None:
    """`frame`'s yuv420p planes copied into one frame of an I420 slot (`i420_shape`): Y into
    `luma` (H, W), U and V into `chroma` (2, H/2, W/2). A frame of another pixel format (a
    prepared clip is yuv420p, a foreign one may not be) is converted to yuv420p by swscale
    first. Each plane is read through one strided array over the frame's buffer (numpy
    refuses a buffer shorter than its rows): the fewest Python calls a frame, which cost
    more than the copies (issue 19)."""
    if frame.format.name != "yuv420p":
        frame = reformatter.reformat(frame, format="yuv420p", threads=1)
    y, u, v = frame.planes
    np.copyto(luma, np.ndarray(luma.shape, np.uint8, y, 0, (y.line_size, 1)))
    np.copyto(chroma[0], np.ndarray(chroma.shape[1:], np.uint8, u, 0, (u.line_size, 1)))
    np.copyto(chroma[1], np.ndarray(chroma.shape[1:], np.uint8, v, 0, (v.line_size, 1)))


def _h264_decoder(extradata: bytes | None) -> av.CodecContext:
    """This thread's H.264 decoder, kept across clips and flushed between them (a clip starts
    with an IDR frame, so nothing of the last one is referred to): opening a decoder for every
    clip, as `container.decode` does, set up and zeroed its context each time, about 1M of the
    11M instructions a 16-frame 112x112 clip costs, and evicted the caches the rest of the
    loader works in (`bench/loader.py`, issue 19). A clip whose parameter sets (`extradata`,
    the same for every clip of one encoder configuration) differ gets a decoder of its own.
    One thread, no frame threads: they cost more to start than 16 small frames take to decode,
    and a DataLoader worker forked after the parent decoded inherits a usable copy."""
    decoder: av.CodecContext | None = getattr(_KEPT, "h264", None)
    if decoder is not None and decoder.extradata == extradata:
        decoder.flush_buffers()
        return decoder
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = extradata
    decoder.thread_type = "NONE"
    decoder.thread_count = 1
    _KEPT.h264 = decoder
    return decoder


def _reformatter() -> VideoReformatter:
    """This thread's swscale context, kept across clips: setting one up for every clip cost
    about as much CPU as converting its frames (`bench/loader.py`, issue 19). PyAV sets it up
    again only when a frame's size or format differs from the last one's. With one swscale
    thread it holds no threads, so a DataLoader worker forked after the parent decoded a
    clip inherits a usable copy."""
    if not hasattr(_KEPT, "reformatter"):
        _KEPT.reformatter = VideoReformatter()
    reformatter: VideoReformatter = _KEPT.reformatter
    return reformatter


_DECODERS = {"json": _decode_json, "txt": _decode_text, "npy": _decode_npy, "mp4": _decode_mp4,
             "jpg": _decode_jpeg, "jpeg": _decode_jpeg,
             "png": functools.partial(_decode_image, "png")}
_MEDIA_MEMBERS = frozenset(SCHEMA_MEMBERS) - {MEMBER_JSON, MEMBER_TEXT}
_INTO_OUT = frozenset({"mp4", "npy", "jpg", "jpeg"})  # the decoders that take `out`


def decode_sample(raw: Mapping[str, Any], expected: Mapping[str, Any] | None = None,
                  outs: Mapping[str, np.ndarray] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """Decode the schema's members of a raw webdataset sample; leave every other one unread.

    Returns the decoded sample (``__key__``, ``__url__`` and other ``__meta__`` entries kept
    as they are) and the names of the members that were dropped undecoded: unknown or unsafe
    types, including a ``clip.*`` of an encoding this schema does not define (a reader may
    pass those with the value None, never having read them). Raises CorruptMemberError for a
    schema member whose bytes do not decode.

    Media members are decoded to the sizes `expected` (the manifest's `expected_from_config`)
    or, without it, to those the sample's own json declares; a sample with media but no usable
    json raises CorruptMemberError, its media left undecoded (see `decode_member`, and for
    `outs`, the buffers members are decoded into by name, its `out`)."""
    sizes = expected
    if sizes is None and not _MEDIA_MEMBERS.isdisjoint(raw):
        sizes = _declared_sizes(raw)
    result = decode_samples_together([raw], sizes, [outs or {}])[0]
    if isinstance(result, CorruptMemberError):
        raise result
    return result


def decode_samples_together(raws: Sequence[Mapping[str, Any]],
                            expected: Mapping[str, Any] | None,
                            outs: Sequence[Mapping[str, np.ndarray]]
                            ) -> list[tuple[dict[str, Any], list[str]] | CorruptMemberError]:
    """`decode_sample` of each of `raws` (into its `outs`) against the sizes `expected`, member
    by member across them: every sample's first member, then every sample's second, and so
    on, each sample's members in its own order. Each result is what `decode_sample` returns,
    or the CorruptMemberError it raises at the sample's first member that does not decode
    (its later members are left undecoded). One decoder run over the same member of
    consecutive samples keeps its code and tables in the caches, which decoding each sample's
    members in turn evicted (issue 19, `bench/loader.py`)."""
    members = [list(raw.items()) for raw in raws]
    decoded: list[dict[str, Any]] = [{} for _ in raws]
    dropped: list[list[str]] = [[] for _ in raws]
    failed: dict[int, CorruptMemberError] = {}
    for position in range(max(map(len, members), default=0)):
        for index, items in enumerate(members):
            if position >= len(items) or index in failed:
                continue
            name, value = items[position]
            if name.startswith("__"):
                decoded[index][name] = value
            elif name in SCHEMA_MEMBERS:
                try:
                    decoded[index][name] = decode_member(name, value, expected,
                                                         outs[index].get(name))
                except CorruptMemberError as err:
                    failed[index] = err
            else:
                dropped[index].append(name)
    return [failed.get(index, (decoded[index], dropped[index])) for index in range(len(raws))]


def _declared_sizes(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes a sample's own json declares, to decode its media members against."""
    why = "its media members are not decoded without the sizes it declares"
    if MEMBER_JSON not in raw:
        raise CorruptMemberError(f"missing member {MEMBER_JSON!r}: {why}")
    meta = decode_member(MEMBER_JSON, raw[MEMBER_JSON])
    try:
        return expected_from_meta(meta)
    except (TypeError, ValueError) as err:
        raise CorruptMemberError(f"{err}; {why}") from err
