"""Look inside prepared shards: what they hold, whether every sample is sound, and pictures.

What `omni inspect` runs, as a library (it returns dataclasses and never prints), one module
per concern:

- `target`: `open_target` resolves a prepared folder (its ``manifest.json``; without one, the
  shards on disk and the stats files of the finished units), one or more ``.tar`` shards, or
  brace patterns, with what was recorded about them.
- `reader`: a shard's samples with the bytes of only the members asked for.
- `summary`: `summarize`, the counts, coverage and member shapes of the default view.
- `export`: `list_samples` / `export_samples`, the first samples as text or as files a person
  can open (frame PNG, clip GIF and contact sheet, mel PNG, transcript).
- `verify`: `verify`, every sample decoded and checked, counts against the records, in
  parallel processes if asked.

Samples are grouped the way webdataset groups them (consecutive members sharing the name up to
the first dot of the base name), so inspect sees exactly what the loader sees. It reads them
the way the loader does too: as plain local tars, each member's declared size checked against
`member_cap` before it is read, media decoded by the same size-checking decoder, and of
a prepared folder only the shards inside it (`pipeline.shards.files.listed_shard_path`)."""
