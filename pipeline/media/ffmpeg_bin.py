"""Which ffmpeg executable the pipeline runs, and how its complaints are reported.

One place decides, so that the FFmpeg decode backend and subtitle extraction always use the same
build: `OMNI_FFMPEG` wins (a system ffmpeg with more codecs, or a cluster module), otherwise the
static build that the `imageio-ffmpeg` wheel ships, which needs no system package."""

from __future__ import annotations

import os
import re
import shutil

import imageio_ffmpeg

from pipeline.errors import PipelineError

ENV_VAR = "OMNI_FFMPEG"
# The "[h264 @ 0x55d1d749fb80] " that starts ffmpeg's log lines: a component and a heap address.
_LOG_PREFIX = re.compile(r"\[[^\[\]]* @ 0x[0-9a-fA-F]+\]\s*")
# A line ffmpeg writes instead of repeating the previous one.
_REPEATED = re.compile(r"^\s*Last message repeated (\d+) times?$")


def ffmpeg_binary() -> str:
    """Return the path of the ffmpeg executable to run.

    `OMNI_FFMPEG` may be a path or a bare command name looked up on `PATH`. Raises
    `PipelineError` when the named binary does not exist or no binary can be found."""
    override = os.environ.get(ENV_VAR)
    if override:
        found = shutil.which(override)
        if found is None:
            raise PipelineError(f"{ENV_VAR}={override!r} is not an executable file or a command "
                                f"on PATH; point it at an ffmpeg binary or unset it to use the "
                                f"bundled one")
        return found
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise PipelineError(f"no ffmpeg binary found ({err}); install the imageio-ffmpeg wheel "
                            f"for this platform or set {ENV_VAR} to an ffmpeg executable") from err


def stderr_error_count(text: str) -> int:
    """Error lines in what ffmpeg wrote to stderr at ``-loglevel error``: each line is one,
    and "Last message repeated N times" stands for N more."""
    count = 0
    for line in text.splitlines():
        repeated = _REPEATED.match(line)
        if repeated:
            count += int(repeated.group(1))
        elif line.strip():
            count += 1
    return count


def stderr_summary(text: str, lines: int = 5) -> str:
    """The last `lines` lines ffmpeg wrote to stderr, joined with " | ".

    The "[component @ 0x...]" prefixes go: the addresses differ on every run, so failure
    reasons and warnings that kept them would never be the same twice (stats, manifests).
    So do repeats of a line ("Last message repeated 1 times", or the line itself again)."""
    kept: list[str] = []
    for line in text.splitlines():
        line = _LOG_PREFIX.sub("", line).strip()
        if line and not _REPEATED.match(line) and line not in kept[-1:]:
            kept.append(line)
    return " | ".join(kept[-lines:])
