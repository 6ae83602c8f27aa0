"""Media in and out for `omni generate`: user files to a batch, model output to files."""
