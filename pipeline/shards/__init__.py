"""The prepared folder's format: schema types, encoding, decoding, validation, shard files,
manifest, shard sets, splits."""
