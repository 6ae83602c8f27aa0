"""Errors raised by the omnilatent library. The CLI renders them; library code never prints.

The base (`OmniLatentError`) and `ConfigError` are the lowest layer's (`pipeline.errors`), so
one ``except`` catches a bad setting wherever it was found, model, trainer or data."""

from pipeline.errors import ConfigError, OmniLatentError


class UsageError(ConfigError):
    """Settings that contradict each other or what is on disk (a save dir that already holds
    a run, held-out data that is not there); ``hint`` says what to pass instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class HookError(OmniLatentError, ValueError):
    """A Latent Neural Hook does not fit the model it is registered with."""


class CheckpointError(OmniLatentError):
    """A checkpoint is missing, partial or corrupt."""
