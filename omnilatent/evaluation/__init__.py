"""Evaluation: metrics on hand-made inputs (`metrics`) and a model on held-out shards
(`evaluate`)."""
