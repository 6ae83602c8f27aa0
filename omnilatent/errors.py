"""Errors raised by the omnilatent library. The CLI renders them; library code never prints."""

from pipeline.errors import ConfigError as PipelineConfigError


class OmniLatentError(Exception):
    """Base class: a problem a user can act on, with a message that says how."""


class ConfigError(OmniLatentError, PipelineConfigError):
    """A configuration value is invalid; the message names the field and what is allowed.

    One kind of bad setting for both libraries: it is also the pipeline's ConfigError (which
    cannot import this one), so ``except pipeline.errors.ConfigError`` catches a bad setting
    wherever it was found, model, trainer or data."""


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
