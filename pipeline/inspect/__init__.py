"""Look inside prepared shards: what they hold, whether every sample is sound, and pictures.

What `omni inspect` runs, as a library (it returns dataclasses and never prints), one module
per concern: `target` (what PATH names: a prepared folder, shards or brace patterns, with what
was recorded about them), `reader` (a shard's samples, read as the loader reads them, with the
bytes of only the members asked for), `summary` (the default view), `export` (the first
samples as text or as files a person can open) and `verify` (every sample decoded and checked,
in parallel processes if asked). Of a prepared folder only the shards inside it are read
(`pipeline.shards.files.listed_shard_path`)."""
