"""Errors raised by the omnilatent library. The CLI renders them; library code never prints."""


class OmniLatentError(Exception):
    """Base class: a problem a user can act on, with a message that says how."""


class ConfigError(OmniLatentError, ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class HookError(OmniLatentError, ValueError):
    """A Latent Neural Hook does not fit the model it is registered with."""


class CheckpointError(OmniLatentError):
    """A checkpoint is missing, partial or corrupt."""
