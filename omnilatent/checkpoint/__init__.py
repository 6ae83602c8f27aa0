"""Checkpoint folders and their card: below training, evaluation and inference, which all
read them (`files`: the on-disk format; `card`: what a checkpoint says about its data)."""
