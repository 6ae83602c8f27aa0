"""Reading media: probe, decode backends, windows, audio, frames, transcripts."""
