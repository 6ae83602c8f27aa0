"""Errors raised by the data pipeline. The CLI renders them; library code never prints."""


class PipelineError(Exception):
    """Base class: a problem a user can act on, with a message that says how."""


class ConfigError(PipelineError, ValueError):
    """A setting is out of range or inconsistent; the message names the field.

    `omnilatent.errors.ConfigError` subclasses it, so catching this one catches the model's
    and trainer's bad settings too."""


class DecodeError(PipelineError):
    """A video could not be decoded; the message is recorded as the video's failure reason."""


class TranscriptError(PipelineError):
    """A subtitle or transcript file could not be read or parsed."""


class MediaError(PipelineError):
    """A file given to `omni generate` cannot be used, or an output cannot be written; the
    message names the file and what to do."""
