"""libx264 options that give the same bytes on every run.

x264's AVX-512 code reads memory that nothing initialised when the picture width is not a
multiple of 64 (our 112-pixel clips): on a CPU with AVX-512 the same frames then encoded to
different bytes from one call to the next, depending on what the heap held (10 distinct clips
in 20 encodes of one 16-frame clip, measured). With its AVX-512 code switched off x264 is
deterministic again at the same speed (21-22 ms per clip either way), and byte-identical to
what a fresh process produced with it. Only that one instruction set is left out, and only
where the CPU has it: x264 takes an explicit list, and forcing a set the CPU lacks would crash
it, but every CPU with AVX-512 has all of the sets listed here.

`omni prepare`'s resume promise (a killed run rerun gives the bytes of an uninterrupted one)
and the demo world's reproducibility rest on this."""

from __future__ import annotations

import functools
from pathlib import Path

# x264's CPU names (x264_cpu_names) of everything below AVX-512 on x86-64.
X264_WITHOUT_AVX512 = ("MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,LZCNT,AVX,FMA3,BMI1,BMI2,AVX2,"
                       "Cache64")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def deterministic_params(flags: frozenset[str]) -> dict[str, str]:
    """The libx264 options that keep its output deterministic on a CPU with `flags`."""
    if "avx512f" in flags:
        return {"x264-params": f"asm={X264_WITHOUT_AVX512}"}
    return {}


@functools.cache
def x264_options(crf: int, preset: str) -> dict[str, str]:
    """Options for PyAV's libx264 stream: `crf`, `preset`, one thread, deterministic bytes."""
    return {"crf": str(crf), "preset": preset, "threads": "1", **deterministic_params(cpu_flags())}
