"""Which ffmpeg executable the pipeline runs.

One place decides, so that the FFmpeg decode backend and subtitle extraction always use the same
build: `OMNI_FFMPEG` wins (a system ffmpeg with more codecs, or a cluster module), otherwise the
static build that the `imageio-ffmpeg` wheel ships, which needs no system package.
"""

from __future__ import annotations

import os
import shutil

import imageio_ffmpeg

from pipeline.errors import PipelineError

ENV_VAR = "OMNI_FFMPEG"


def ffmpeg_binary() -> str:
    """Return the path of the ffmpeg executable to run.

    `OMNI_FFMPEG` may be a path or a bare command name looked up on `PATH`. Raises
    `PipelineError` when the named binary does not exist or no binary can be found.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        found = shutil.which(override)
        if found is None:
            raise PipelineError(
                f"{ENV_VAR}={override!r} is not an executable file or a command on PATH; "
                f"point it at an ffmpeg binary or unset it to use the bundled one"
            )
        return found
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise PipelineError(
            f"no ffmpeg binary found ({err}); install the imageio-ffmpeg wheel for this "
            f"platform or set {ENV_VAR} to an ffmpeg executable"
        ) from err
