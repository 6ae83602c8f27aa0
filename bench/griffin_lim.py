"""Measure how well `pipeline.media.audio.mel_to_waveform` inverts `log_mel` (README, generate).

For a pure tone (440 Hz), a chirp (100 Hz -> 4 kHz), a click train (10 per second) and white
noise, each 0.5 peak or 0.1 RMS at the default prepare settings: the clip's log-mel (float16,
as the shards store it) is turned back into sound and analysed again; printed are the mean
|difference| of the log-mels over all bins and over the bins within 40 dB of the clip's
peak (log units: 0.115 is 0.5 dB of power), the tone's recovered frequency and the time
per 2 s clip, for each number of iterations.

    python bench/griffin_lim.py                  # 16, 32 and 64 iterations
    python bench/griffin_lim.py --iterations 8 128
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from pipeline.config import PrepareConfig
from pipeline.media.audio import log_mel, mel_to_waveform

LOUD_RANGE = math.log(1e4)  # 40 dB of power, in log units


def signals(config: PrepareConfig) -> dict[str, np.ndarray]:
    t = np.arange(config.samples_per_clip) / config.sample_rate  # (S,)
    clicks = np.zeros_like(t)
    clicks[:: config.sample_rate // 10] = 0.9
    sweep = (4000 - 100) / (2 * config.clip_duration)
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.5 * np.sin(2 * np.pi * (100 * t + sweep * t**2)),
        "clicks": clicks,
        "noise": 0.1 * np.random.default_rng(0).standard_normal(len(t)),
    }


def peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum)) * sample_rate / len(audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = PrepareConfig()
    print(f"{'signal':8} {'iters':>5} {'all bins':>9} {'loud bins':>10} {'ms/clip':>8}  note")
    for name, signal in signals(config).items():
        mel = log_mel(signal.astype(np.float32), config)  # (M, T) float16
        reference = mel.astype(np.float32)
        loud = reference > reference.max() - LOUD_RANGE
        for iterations in args.iterations:
            started = time.perf_counter()
            audio = mel_to_waveform(mel, config, iterations)  # (S,)
            elapsed = time.perf_counter() - started
            error = np.abs(log_mel(audio, config).astype(np.float32) - reference)  # (M, T)
            note = f"peak {peak_hz(audio, config.sample_rate):.1f} Hz" if name == "tone" else ""
            print(f"{name:8} {iterations:5d} {error.mean():9.3f} {error[loud].mean():10.3f} "
                  f"{1000 * elapsed:8.0f}  {note}")


if __name__ == "__main__":
    main()
