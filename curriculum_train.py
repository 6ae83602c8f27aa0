"""The seed's import path: ``from curriculum_train import CurriculumTrainer``.

OmniLatent started from a seed whose curriculum trainer lived in a top-level script,
``curriculum_train.py``. The trainer now lives in `omnilatent.training.curriculum` and the
script's command line is ``omni train`` (README, "Coming from the original OmniLatent");
this module only keeps the seed's import working.
"""

from omnilatent.training.curriculum import CurriculumTrainer

__all__ = ["CurriculumTrainer"]
