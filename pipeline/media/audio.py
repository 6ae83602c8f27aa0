"""Log-mel spectrograms for the audio modality, computed with numpy and our own filterbank,
and back to a waveform (`mel_to_waveform`, Griffin-Lim) for audio a model generates.

`log_mel` runs in every `omni prepare` worker, which must not import torch (seconds of start-up
per run, and memory per worker): it frames, windows and transforms with `numpy.fft.rfft`. The
tests pin it to `torch.stft` with the same window and padding. `mel_to_waveform`, used by
`omni generate` where torch is loaded anyway, imports torch when it runs.

torchaudio is not a dependency (no wheel for every platform we run on), so the mel filterbank is
written here from torchaudio's definition (`melscale_fbanks(norm=None, mel_scale="htk")`); the
tests pin it against reference values computed with librosa, which shares that definition.

Notation: F = n_fft // 2 + 1 frequency bins, M = n_mels, T = mel frames, S = samples."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Added to the mel power before the log. 1e-6 sits near the mel power of 16-bit quantisation
# noise (a full-scale sine gives ~1e4 at the default 25 ms window), so digital silence and a
# decoded "quiet" track land at about the same value, ~100 dB below full scale, instead of
# digital zeros becoming -23 (a 1e-10 floor) outliers that dominate the feature's range.
# Adding it (rather than clamping) keeps the map smooth. Silence maps to log(1e-6) ≈ -13.8.
LOG_FLOOR = 1e-6


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int,
                   sample_rate: int) -> np.ndarray:
    """Triangular HTK-mel filters as a float32 `(n_freqs, n_mels)` matrix, unnormalised.

    Same definition as `torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk")`, so
    features match models and recipes built on torchaudio: bin k sits at
    `k * (sample_rate // 2) / (n_freqs - 1)` Hz; filter m rises linearly from mel point m to
    m + 1 and falls to m + 2, with the n_mels + 2 points evenly spaced in mel between f_min and
    f_max. Computed in float64, returned as float32.

    A filter narrower than the bin spacing can catch no bin and is all zeros (e.g. the lowest
    HTK filters for 128 mels at n_fft=400); such a channel carries no information."""
    if n_freqs < 2 or n_mels < 1:
        raise ConfigError(f"need n_freqs >= 2 and n_mels >= 1, got {n_freqs} and {n_mels}")
    if not 0 <= f_min < f_max:
        raise ConfigError(f"need 0 <= f_min < f_max, got f_min={f_min} and f_max={f_max}")
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs, dtype=np.float64)  # (F,)
    m_pts = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)  # (M + 2,)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # (M + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]  # (M + 1,)
    slopes = f_pts[np.newaxis, :] - all_freqs[:, np.newaxis]  # (F, M + 2)
    down = -slopes[:, :-2] / f_diff[:-1]  # (F, M) rising edge: (f - left) / width
    up = slopes[:, 2:] / f_diff[1:]  # (F, M) falling edge: (right - f) / width
    fb = np.maximum(np.minimum(down, up), 0.0)  # (F, M)
    return fb.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _analysis(n_fft: int, sample_rate: int, n_mels: int, f_min: float,
              f_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Periodic Hann window `(n_fft,)` and filterbank `(F, M)`, both float32 and read-only,
    built once per setting."""
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate)  # (F, M)
    window.flags.writeable = False
    fb.flags.writeable = False
    return window, fb  # (n_fft,), (F, M)


def log_mel(samples: np.ndarray, config: PrepareConfig) -> np.ndarray:
    """Log-mel spectrogram of one clip: float16 `(n_mels, config.audio_frames)`.

    `samples` is the clip's mono audio at `config.sample_rate`, exactly
    `config.samples_per_clip` values, nominally in [-1, 1]. Each frame is a Hann-windowed
    `n_fft` STFT centred on a multiple of `hop_length` (reflect padding at the edges, as
    torchaudio and librosa do), projected onto the mel filters as power (|X|^2), then
    `log(mel + LOG_FLOOR)`.

    Centred framing yields 1 + S / hop frames; the last one is centred on the clip's end, i.e.
    on the first frame of the audio that follows. Keeping the first `mel_frames` = S / hop gives
    exactly one frame per hop, frame t describing time `start + t * hop / sample_rate`, so
    clips tile the timeline without a duplicated frame and T depends only on the config.

    Raises ValueError for input of the wrong shape or with non-finite values, and ConfigError
    if the clip is too short for reflect padding."""
    return _log_mel_float32(samples, config).astype(np.float16)  # (M, T)


def _log_mel_float32(samples: np.ndarray, config: PrepareConfig) -> np.ndarray:
    """`log_mel` before its cast to float16: float32 `(n_mels, audio_frames)`."""
    expected = config.samples_per_clip
    x = np.asarray(samples, dtype=np.float32)  # (S,)
    if x.ndim != 1 or x.shape[0] != expected:
        raise ValueError(f"log_mel expects mono audio of shape ({expected},) "
                         f"(clip_duration * sample_rate), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("log_mel got NaN or infinite audio samples; the decoder output is corrupt")
    if expected <= config.n_fft // 2:
        raise ConfigError(f"a clip of {expected} samples is too short for n_fft={config.n_fft}: "
                          f"reflect padding needs more than n_fft // 2 samples; lengthen "
                          f"clip_duration or lower n_fft")
    window, fb = _analysis(config.n_fft, config.sample_rate, config.n_mels,
                           float(config.f_min), float(config.mel_f_max))
    half = config.n_fft // 2
    padded = np.pad(x, half, mode="reflect")  # (S + 2 * half,)
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)  # (S + 1, n_fft)
    frames = frames[:: config.hop_length][: config.audio_frames]  # (T, n_fft) a view, no copy
    spec = np.fft.rfft(frames * window, axis=1)  # (T, F) complex64
    power = spec.real * spec.real + spec.imag * spec.imag  # (T, F)
    mel = power @ fb  # (T, M)
    return np.log(mel.T + np.float32(LOG_FLOOR))  # (M, T)


def silent_log_mel(config: PrepareConfig) -> np.ndarray:
    """What `log_mel` gives for digital silence, for videos that have no audio stream.

    Equal to `log_mel(np.zeros(config.samples_per_clip), config)` without computing an STFT."""
    return np.full((config.n_mels, config.audio_frames), math.log(LOG_FLOOR),
                   dtype=np.float16)  # (M, T)


# Griffin-Lim, measured on a tone, a chirp, a click train and noise (bench/griffin_lim.py):
# momentum 0.9 beat 0, 0.8, 0.95, 0.99 (torchaudio's default) and 1.1 at 16, 32 and 64
# iterations; 50 multiplicative NNLS steps bring a chirp's re-analysed log-mel from 0.73 (the
# clamped pseudo-inverse alone) to 0.17 mean error at 32 iterations; 200 steps give 0.169.
GRIFFIN_LIM_MOMENTUM = 0.9
NNLS_STEPS = 50


def mel_to_waveform(mel: np.ndarray, config: PrepareConfig, iterations: int = 32,
                    seed: int = 0) -> np.ndarray:
    """Audio whose `log_mel` is close to `mel`, a (n_mels, T) log-mel: float32
    (T * hop_length,) in [-1, 1] at `config.sample_rate`. The inverse of `log_mel`, for audio
    a model generates.

    The steps and their measured quality are in README.md, "How audio is written": mel power
    back to linear power by the filterbank's pseudo-inverse refined by `NNLS_STEPS`
    non-negative least-squares steps (many more bins than filters leave the exact inverse
    underdetermined), then fast Griffin-Lim with `log_mel`'s own analysis, from a phase drawn
    from `seed`, so the output is deterministic.

    `log_mel` keeps T of the 1 + T centred frames (the last, centred on the clip's end,
    belongs to the next clip); it is taken equal to frame T - 1 here. Raises ConfigError when
    the mel's bands do not match `config` or it is too short to frame."""
    import torch

    values = torch.tensor(np.asarray(mel, dtype=np.float32))  # (M, T)
    if values.ndim != 2 or values.shape[0] != config.n_mels:
        raise ConfigError(f"expected a log-mel of shape (n_mels={config.n_mels}, frames), got "
                          f"{tuple(values.shape)}; pass the prepare config the model was "
                          f"trained with")
    length = values.shape[1] * config.hop_length
    if length <= config.n_fft // 2:
        raise ConfigError(f"a log-mel of {values.shape[1]} frames is too short to invert with "
                          f"n_fft={config.n_fft}; it needs more than "
                          f"{config.n_fft // 2 // config.hop_length} frames")
    if iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {iterations}")
    if not torch.isfinite(values).all():
        raise ConfigError("the log-mel holds NaN or infinite values; cannot invert it")
    numbers = (config.n_fft, config.sample_rate, config.n_mels, float(config.f_min),
               float(config.mel_f_max))
    window, fb_t = _torch_analysis(*numbers)
    mel_power = (values.exp() - LOG_FLOOR).clamp_(min=0.0)  # (M, T)
    power = _mel_to_power(mel_power, fb_t, _pseudo_inverse(*numbers))  # (F, T)
    magnitude = power.sqrt()  # (F, T)
    magnitude = torch.cat([magnitude, magnitude[:, -1:]], dim=1)  # (F, T + 1)

    def stft(signal: torch.Tensor) -> torch.Tensor:
        return torch.stft(signal, n_fft=config.n_fft, hop_length=config.hop_length,
                          win_length=config.n_fft, window=window, center=True,
                          pad_mode="reflect", return_complex=True)  # (F, T + 1)

    def istft(spec: torch.Tensor) -> torch.Tensor:
        return torch.istft(spec, n_fft=config.n_fft, hop_length=config.hop_length,
                           win_length=config.n_fft, window=window, center=True,
                           length=length)  # (S,)

    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator) * (2 * math.pi)  # (F, T + 1)
    angles = torch.polar(torch.ones_like(magnitude), phase)  # (F, T + 1) complex
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        rebuilt = stft(istft(magnitude * angles))  # (F, T + 1)
        angles = rebuilt - previous * (GRIFFIN_LIM_MOMENTUM / (1 + GRIFFIN_LIM_MOMENTUM))
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return istft(magnitude * angles).clamp_(-1.0, 1.0).numpy()  # (S,)


@functools.lru_cache(maxsize=8)
def _torch_analysis(n_fft: int, sample_rate: int, n_mels: int, f_min: float,
                    f_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_analysis` as torch tensors: Hann window `(n_fft,)` and transposed filterbank `(M, F)`."""
    import torch

    window, fb = _analysis(n_fft, sample_rate, n_mels, f_min, f_max)  # (n_fft,), (F, M)
    return torch.tensor(window), torch.tensor(fb.T)  # (n_fft,), (M, F)


@functools.lru_cache(maxsize=8)
def _pseudo_inverse(n_fft: int, sample_rate: int, n_mels: int, f_min: float,
                    f_max: float) -> torch.Tensor:
    """(F, M) Moore-Penrose pseudo-inverse of `_analysis`'s filterbank, computed in float64."""
    import torch

    _, fb_t = _torch_analysis(n_fft, sample_rate, n_mels, f_min, f_max)  # (M, F)
    return torch.linalg.pinv(fb_t.double()).float()  # (F, M)


def _mel_to_power(mel_power: torch.Tensor, fb_t: torch.Tensor,
                  pseudo_inverse: torch.Tensor) -> torch.Tensor:
    """Non-negative linear-frequency power (F, T) whose mel projection fits `mel_power` (M, T).

    Starts from the clamped pseudo-inverse and applies Lee-Seung multiplicative updates for
    min ||fb_t @ P - mel||^2, P >= 0: each step keeps P non-negative and lowers the error."""
    power = (pseudo_inverse @ mel_power).clamp_(min=1e-10)  # (F, T)
    numerator = fb_t.T @ mel_power  # (F, T)
    for _ in range(NNLS_STEPS):
        power = power * numerator / (fb_t.T @ (fb_t @ power) + 1e-12)  # (F, T)
    return power
