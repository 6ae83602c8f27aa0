"""The torch read side: shards in, model-ready batches out."""
