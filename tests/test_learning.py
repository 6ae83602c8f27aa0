"""The model learns what it promises: a tiny model trained with the default curriculum on a
2-class world retrieves across modalities and writes transcripts of unseen samples far above
chance. (bench/learning.py measures the same on real videos of 8 classes.)"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.evaluation.evaluate import evaluate
from omnilatent.inference.text import BYTE_CODEC
from omnilatent.training import ResumableLoader, TrainConfig
from omnilatent.training.curriculum import CurriculumTrainer
from omnilatent.training.rng import seed_everything
from pipeline.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer

SIZES = dict(n_mels=16, audio_frames=24, image_size=32, patch_size=16, video_size=32,
             video_frames=8)
CLASSES = (("red hums", (1.0, -1.0, -1.0), 2), ("blue beeps", (-1.0, -1.0, 1.0), 11))


class TwoClassWorld(Dataset):
    """A coloured square at a random place over grey noise of a random level, a sound in a
    class band over noise at a random loudness, and the class's sentence. Sample i of a seed
    is fixed; another seed gives unseen samples of the same classes."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        label = index % 2
        sentence, colour, band = CLASSES[label]
        level = torch.rand(1, generator=g).item() - 0.5
        video = level + 0.3 * torch.randn(3, 8, 32, 32, generator=g)  # (3, T, H, W)
        top, left = torch.randint(0, 20, (2,), generator=g).tolist()
        video[:, :, top:top + 12, left:left + 12] = torch.tensor(colour)[:, None, None, None]
        loudness = 0.5 + torch.rand(1, generator=g).item()
        audio = -1.5 + 0.3 * torch.randn(16, 24, generator=g)  # (M, T)
        audio[band:band + 3] += 2.0 * loudness
        return {"video": video, "image": video[:, 4], "audio": audio,
                "text": byte_tokenizer(sentence, 32),
                "__key__": f"{self.seed}_{index}", "meta": {"source": f"{label}/{index}.mp4"}}


def test_default_curriculum_learns_retrieval_and_transcripts() -> None:
    seed_everything(0)
    config = OmniLatentConfig(hidden_dim=48, num_layers=2, num_heads=4,
                              vocab_size=BYTE_VOCAB_SIZE, **SIZES)
    model = OmniLatentModel(config)
    loader = ResumableLoader(TwoClassWorld(256, seed=0), batch_size=8, seed=0)
    CurriculumTrainer(model, TrainConfig(steps=600, lr=3e-3, log_interval=50), loader,
                      corpus_has_text=True).train()

    unseen = ResumableLoader(TwoClassWorld(32, seed=1), batch_size=16, shuffle=False)
    report = evaluate(model, unseen, BYTE_CODEC, labels=lambda meta: meta["source"][0])
    metrics = report.metrics
    for task in ("audio_to_video", "video_to_audio"):
        by_label = metrics["retrieval_by_label"][task]
        assert by_label["chance_r1"] == 0.5
        assert by_label["r1"] >= 0.9, (task, by_label)
    for task in ("video_to_text", "audio_to_text"):
        assert metrics["text"][task]["token_accuracy"] >= 0.9, (task, metrics["text"][task])
        named = [c for c in report.captions[task] if c.generated == CLASSES[int(c.source[0])][0]]
        assert len(named) >= 0.9 * len(report.captions[task])
    # an untrained model of the same size scores near chance on the same windows
    baseline = evaluate(OmniLatentModel(config), unseen, BYTE_CODEC,
                        labels=lambda meta: meta["source"][0]).metrics
    assert baseline["text"]["video_to_text"]["token_accuracy"] < 0.2
