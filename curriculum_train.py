"""The seed's curriculum script and import path.

OmniLatent started from a seed whose curriculum trainer lived in a top-level script,
``curriculum_train.py``. The trainer now lives in `omnilatent.training.curriculum` (this module
re-exports it: ``from curriculum_train import CurriculumTrainer``) and the script's command
line is ``omni train`` (README, "Coming from the original OmniLatent"). Run as a script, it
still trains the curriculum: ``python curriculum_train.py --synthetic --total-steps 5`` is
``omni train --phase-schedule default --synthetic --total-steps 5``, which it prints first.
"""

import shlex
import sys

from omnilatent.training.curriculum import CurriculumTrainer

__all__ = ["CurriculumTrainer", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``omni train`` with ``argv`` (default: the command line), the default curriculum
    unless ``--phase-schedule`` is given: without it ``--synthetic`` would train the 16
    modality pairs in turn, not the curriculum the seed's script ran."""
    from cli.app import build_app
    from cli.console import console

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg.split("=")[0] == "--phase-schedule" for arg in args):
        args = ["--phase-schedule", "default", *args]
    console.print(f"curriculum_train.py runs: omni train {shlex.join(args)}", style="dim",
                  markup=False, highlight=False, soft_wrap=True)
    build_app(["train"])(["train", *args], prog_name="omni")


if __name__ == "__main__":
    main()
