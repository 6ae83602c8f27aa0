"""`omni prepare`: plan, per-video jobs in worker processes, the output folder, the run."""
