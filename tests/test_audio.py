"""Log-mel features: the filterbank against golden values, the numpy STFT against torch.stft,
the framing, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.media.audio import (
    LOG_FLOOR,
    _analysis,
    _log_mel_float32,
    log_mel,
    mel_filterbank,
    silent_log_mel,
)

# Golden values. Produced once, outside the project, in a throwaway venv with librosa 0.11.0:
#   fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX,
#                            htk=True, norm=None, dtype=np.float64).T   # (n_freqs, n_mels)
# librosa with htk=True, norm=None computes exactly torchaudio's
# melscale_fbanks(n_freqs, f_min, f_max, n_mels, sr, norm=None, mel_scale="htk").
# Entries are (frequency bin, mel channel, value).

# sr=16000, n_fft=400 (201 bins), 128 mels, 0-8000 Hz: the shard schema v1 defaults.
DEFAULT_ENTRIES = [
    (1, 1, 0.15663508763199602),
    (29, 49, 0.9742401950378549),
    (57, 73, 0.8467793093746258),
    (85, 89, 0.5149119063048986),
    (113, 102, 0.8493277374969435),
    (141, 112, 0.799495092968271),
    (169, 121, 0.12746481357869366),
]
DEFAULT_TOTAL = 197.37665036003375
DEFAULT_COLSUMS_HEAD = [0.0, 0.15663509, 0.84336491, 0.0, 0.46291783, 0.53708217, 0.0,
                        0.90130471, 0.09869529, 0.4647554]
DEFAULT_COLSUMS_TAIL = [4.00451285, 4.08091974, 4.15436872]  # channels 125, 126, 127
DEFAULT_EMPTY_CHANNELS = [0, 3, 6, 13]  # HTK filters narrower than the 40 Hz bin spacing
DEFAULT_ROWSUM_199 = 0.23766503600338157
DEFAULT_NONZERO = 394  # entries > 1e-6

# sr=8000, n_fft=256 (129 bins), 10 mels, 50-3000 Hz.
SMALL_ENTRIES = [
    (2, 0, 0.10673755080225385),
    (16, 2, 0.7736938190478391),
    (28, 4, 0.8936092922369394),
    (40, 5, 0.4321272143347611),
    (52, 6, 0.21405598365276252),
    (64, 7, 0.1820643515033655),
    (76, 8, 0.2898671576101224),
    (95, 9, 0.06253592101465558),
]
SMALL_TOTAL = 84.53232398700149
SMALL_COLSUMS = [4.0407947, 4.67165779, 5.40368658, 6.23266093, 7.22171029, 8.35224319,
                 9.64907613, 11.15174226, 12.89310525, 14.91564688]
SMALL_ROWSUMS_HEAD = [0.0, 0.0, 0.10673755080225385, 0.373581427807888, 0.6404253048135222]
SMALL_PEAK_BINS = [5, 10, 15, 21, 27, 35, 44, 54, 66, 80]
SMALL_NONZERO = 169

ATOL = 1e-5  # float32 result against float64 references


def _mel_centres_hz(f_min: float, f_max: float, n_mels: int) -> np.ndarray:
    mel = np.linspace(2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700),
                      n_mels + 2)
    return (700 * (10 ** (mel / 2595) - 1))[1:-1]  # (n_mels,)


def test_filterbank_matches_reference_default_config() -> None:
    fb = mel_filterbank(201, 0.0, 8000.0, 128, 16000)
    assert fb.shape == (201, 128) and fb.dtype == np.float32
    for k, m, value in DEFAULT_ENTRIES:
        assert fb[k, m].item() == pytest.approx(value, abs=ATOL)
    assert fb.sum().item() == pytest.approx(DEFAULT_TOTAL, abs=1e-3)
    colsums = fb.sum(0).tolist()
    assert colsums[:10] == pytest.approx(DEFAULT_COLSUMS_HEAD, abs=ATOL)
    assert colsums[-3:] == pytest.approx(DEFAULT_COLSUMS_TAIL, abs=ATOL)
    assert [m for m, s in enumerate(colsums) if s == 0.0] == DEFAULT_EMPTY_CHANNELS
    rowsums = fb.sum(1)
    assert rowsums[0].item() == 0.0
    # Interior bins lie under two adjacent triangles whose weights add up to one.
    np.testing.assert_allclose(rowsums[1:196], np.ones(195), atol=ATOL, rtol=0)
    assert rowsums[199].item() == pytest.approx(DEFAULT_ROWSUM_199, abs=ATOL)
    assert rowsums[200].item() == pytest.approx(0.0, abs=ATOL)
    assert int((fb > 1e-6).sum()) == DEFAULT_NONZERO
    assert (fb >= 0).all()


def test_filterbank_matches_reference_small_config() -> None:
    fb = mel_filterbank(129, 50.0, 3000.0, 10, 8000)
    assert fb.shape == (129, 10)
    for k, m, value in SMALL_ENTRIES:
        assert fb[k, m].item() == pytest.approx(value, abs=ATOL)
    assert fb.sum().item() == pytest.approx(SMALL_TOTAL, abs=1e-4)
    assert fb.sum(0).tolist() == pytest.approx(SMALL_COLSUMS, abs=ATOL)
    assert fb.sum(1)[:5].tolist() == pytest.approx(SMALL_ROWSUMS_HEAD, abs=ATOL)
    assert fb.argmax(0).tolist() == SMALL_PEAK_BINS
    assert int((fb > 1e-6).sum()) == SMALL_NONZERO
    # Nothing outside [f_min, f_max]: 50 Hz is bin 1.6, 3000 Hz is bin 96.
    assert np.abs(fb[:2]).sum() == 0.0 and np.abs(fb[97:]).sum() == 0.0


@pytest.mark.parametrize(
    ("args", "field"),
    [((1, 0.0, 100.0, 4, 8000), "n_freqs"), ((65, 0.0, 100.0, 0, 8000), "n_mels"),
     ((65, 200.0, 100.0, 4, 8000), "f_min"), ((65, -1.0, 100.0, 4, 8000), "f_min")],
)
def test_filterbank_rejects_bad_arguments(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        mel_filterbank(*args)


def _tone(freq: float, config: PrepareConfig, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(config.samples_per_clip) / config.sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_shape_dtype_and_finiteness() -> None:
    config = PrepareConfig()
    out = log_mel(_tone(440.0, config), config)
    assert out.shape == (128, 200) == (config.n_mels, config.audio_frames)
    assert out.dtype == np.float16
    assert np.isfinite(out).all()


# From ~1 kHz up, the default HTK filters are wider than the 40 Hz FFT bins. Below it they are
# narrower (some catch no bin at all), so a tone between two bins can peak in a neighbour.
@pytest.mark.parametrize("freq", [1000.0, 1500.0, 2500.0, 4000.0, 6000.0, 7300.0])
def test_pure_tone_peaks_in_nearest_mel_channel(freq: float) -> None:
    config = PrepareConfig()
    out = log_mel(_tone(freq, config), config).astype(np.float32)  # (M, T)
    centres = _mel_centres_hz(config.f_min, config.mel_f_max, config.n_mels)
    expected = int(np.argmin(np.abs(centres - freq)))
    peaks = out[:, 2:-2].argmax(axis=0)  # away from the reflect-padded edges
    assert (peaks == expected).all(), (freq, expected, np.unique(peaks))


def test_pure_tone_small_config() -> None:
    config = PrepareConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=10, f_min=50.0,
                           f_max=3000.0)
    centres = _mel_centres_hz(50.0, 3000.0, 10)
    for m in (2, 5, 8):
        out = log_mel(_tone(float(centres[m]), config), config)
        assert (out[:, 2:-2].argmax(axis=0) == m).all()


def _numpy_reference(samples: np.ndarray, config: PrepareConfig) -> np.ndarray:
    """An independent float64 log-mel: explicit reflect padding, framing and rfft."""
    n_fft, hop = config.n_fft, config.hop_length
    padded = np.pad(samples.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[t * hop: t * hop + n_fft] * window
                       for t in range(config.audio_frames)])  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F)
    fb = mel_filterbank(n_fft // 2 + 1, config.f_min, config.mel_f_max, config.n_mels,
                        config.sample_rate).astype(np.float64)  # (F, M)
    return np.log(power @ fb + LOG_FLOOR).T  # (M, T)


def test_matches_independent_numpy_stft() -> None:
    config = PrepareConfig()
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(config.samples_per_clip)
               + _tone(1234.0, config, 0.3)).astype(np.float32)
    expected = _numpy_reference(samples, config)
    got = log_mel(samples, config).astype(np.float64)
    # float16 keeps 11 significant bits: 2**-11 relative, plus float32 STFT error near the floor
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-2)


def test_frame_t_describes_time_t_times_hop() -> None:
    config = PrepareConfig()
    half = config.samples_per_clip // 2  # the tone starts at 1.0 s, the centre of frame 100
    samples = _tone(1000.0, config)
    samples[:half] = 0.0
    out = log_mel(samples, config).astype(np.float32)  # (M, T)
    floor = np.float32(np.float16(math.log(LOG_FLOOR)))
    # Frame t sees samples [t * hop - n_fft / 2, t * hop + n_fft / 2).
    last_silent = (half - config.n_fft // 2) // config.hop_length  # 98
    assert (out[:, : last_silent + 1] == floor).all()
    assert (out[:, last_silent + 1] > floor).any()  # frame 99 catches the onset's edge
    assert (out[:, half // config.hop_length:].max(axis=0) > 5.0).all()


def test_zeros_give_the_constant_floor_and_silent_log_mel_agrees() -> None:
    config = PrepareConfig()
    out = log_mel(np.zeros(config.samples_per_clip, dtype=np.float32), config)
    assert np.isfinite(out).all()
    assert np.unique(out).tolist() == [pytest.approx(math.log(LOG_FLOOR), abs=1e-2)]
    silent = silent_log_mel(config)
    assert silent.dtype == np.float16 and silent.shape == out.shape
    np.testing.assert_array_equal(silent, out)


@pytest.mark.parametrize("shape", [(31999,), (32001,), (0,), (2, 32000)])
def test_wrong_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="32000"):
        log_mel(np.zeros(shape, dtype=np.float32), PrepareConfig())


def test_non_finite_input_raises() -> None:
    samples = np.zeros(32000, dtype=np.float32)
    samples[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        log_mel(samples, PrepareConfig())


def test_float64_and_read_only_input_accepted() -> None:
    config = PrepareConfig()
    samples = _tone(440.0, config).astype(np.float64)
    samples.flags.writeable = False
    np.testing.assert_array_equal(log_mel(samples, config),
                                  log_mel(samples.astype(np.float32), config))


def test_analysis_is_cached_per_numbers_not_per_config() -> None:
    _analysis.cache_clear()
    log_mel(np.zeros(32000, dtype=np.float32), PrepareConfig())
    log_mel(np.zeros(32000, dtype=np.float32), PrepareConfig(jpeg_quality=50))
    info = _analysis.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def _torch_log_mel(samples: np.ndarray, config: PrepareConfig, dtype: torch.dtype) -> np.ndarray:
    """The log-mel as `log_mel` computed it with `torch.stft` before issue 10, in `dtype`."""
    window = torch.hann_window(config.n_fft, periodic=True, dtype=dtype)  # (n_fft,)
    fb_t = torch.tensor(mel_filterbank(config.n_fft // 2 + 1, config.f_min, config.mel_f_max,
                                       config.n_mels, config.sample_rate), dtype=dtype).T
    spec = torch.stft(torch.tensor(samples, dtype=dtype), n_fft=config.n_fft,
                      hop_length=config.hop_length, win_length=config.n_fft, window=window,
                      center=True, pad_mode="reflect", return_complex=True)  # (F, T + 1)
    power = spec.real.square() + spec.imag.square()  # (F, T + 1)
    return torch.log(fb_t @ power[:, : config.audio_frames] + LOG_FLOOR).numpy()  # (M, T)


def _speech_like(config: PrepareConfig) -> np.ndarray:
    """Voiced syllables (a gliding 100-160 Hz pitch, harmonics shaped by three formants, 4 Hz
    syllable rate) with fricative noise bursts in between: speech's spectral shape and dynamics."""
    rng = np.random.default_rng(1)
    t = np.arange(config.samples_per_clip) / config.sample_rate  # (S,)
    phase = 2 * np.pi * np.cumsum(130 + 30 * np.sin(2 * np.pi * 1.5 * t)) / config.sample_rate
    voiced = np.zeros_like(t)
    for k in range(1, 40):
        pitch = k * (130 + 30 * np.sin(2 * np.pi * 1.5 * t))  # (S,) Hz of harmonic k
        gain = sum(1 / (1 + ((pitch - f) / 120) ** 2) for f in (700, 1200, 2600))  # (S,)
        voiced += gain * np.sin(k * phase) / k
    syllables = np.maximum(np.sin(2 * np.pi * 4 * t), 0.0)  # (S,)
    hiss = np.diff(rng.standard_normal(t.size + 1)) * (syllables < 0.05)  # (S,) high-passed
    speech = 0.3 * voiced * syllables + 0.05 * hiss
    return (0.8 * speech / np.abs(speech).max()).astype(np.float32)


def _comparison_signals(config: PrepareConfig) -> dict[str, np.ndarray]:
    t = np.arange(config.samples_per_clip) / config.sample_rate  # (S,)
    rng = np.random.default_rng(0)
    return {
        "speech": _speech_like(config),
        "tones": 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3000 * t),
        "full-scale tone": np.sin(2 * np.pi * 1000 * t),
        "silence": np.zeros_like(t),
        "clipping": np.clip(4 * np.sin(2 * np.pi * 220 * t), -1.0, 1.0),
        "noise": 0.1 * rng.standard_normal(t.size),
        "near the floor": 1e-4 * rng.standard_normal(t.size),
    }


@pytest.mark.parametrize("name", list(_comparison_signals(PrepareConfig())))
def test_numpy_log_mel_equals_the_torch_stft_path(name: str) -> None:
    """The workers' numpy log-mel against the torch.stft path it replaced: within 1e-4 of that
    path run in float64, and at least as close to it as the float32 torch path (which was
    itself up to 2.5e-4 away on the speech-like signal, where the numpy path stays within 2e-5)."""
    config = PrepareConfig()
    samples = _comparison_signals(config)[name].astype(np.float32)
    got = _log_mel_float32(samples, config)  # (M, T)
    exact = _torch_log_mel(samples, config, torch.float64)
    error = np.abs(got - exact).max()
    assert error <= 1e-4
    assert error <= np.abs(_torch_log_mel(samples, config, torch.float32) - exact).max() + 1e-6
    np.testing.assert_array_equal(log_mel(samples, config), got.astype(np.float16))
