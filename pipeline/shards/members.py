"""The shard schema's member names and clip encodings, apart from `pipeline.shards`.

`pipeline.shards` imports numpy, PyAV and PIL to encode and decode members; the parent process
of `omni prepare` needs only these names (to validate `--clip-encoding`, to count clips with
text), and importing those libraries would add ~0.5 s to every run's start-up
(tests/test_torch_free.py checks that it does not). `pipeline.shards` re-exports every name.
"""

from __future__ import annotations

MEMBER_JSON = "json"
MEMBER_MEL = "mel.npy"
MEMBER_IMAGE = "frame.jpg"
MEMBER_TEXT = "txt"
CLIP_PREFIX = "clip."
CLIP_ENCODINGS = ("npy", "mp4")
# Chosen by bench/clip_encoding.py on natural-like content: mp4 makes the clip 19x and the
# whole sample 5.7x smaller (122 kB vs 693 kB) for ~7 ms more decode per clip, i.e. ~2.7x the
# loader CPU per sample. Disk, network and shuffle-buffer memory are the scarcer resources at
# corpus scale, and loader CPU scales with workers.
DEFAULT_CLIP_ENCODING = "mp4"
CLIP_MEMBERS = tuple(CLIP_PREFIX + encoding for encoding in CLIP_ENCODINGS)
SCHEMA_MEMBERS = (MEMBER_JSON, MEMBER_MEL, MEMBER_IMAGE, MEMBER_TEXT, *CLIP_MEMBERS)
