"""Errors raised by the libraries. The CLI renders them; library code never prints. The base
and `ConfigError` live here, in the lowest layer: `omnilatent.errors` adds its own kinds."""


class OmniLatentError(Exception):
    """Base class: a problem a user can act on, with a message that says how."""


class PipelineError(OmniLatentError):
    """A problem with the data, its files, tools or settings."""


class ConfigError(PipelineError, ValueError):
    """A setting is out of range or inconsistent; the message names the field. One kind of
    bad setting for the pipeline, the model and the trainer."""


class DecodeError(PipelineError):
    """A video could not be decoded; the message is recorded as the video's failure reason."""


class TranscriptError(PipelineError):
    """A subtitle or transcript file could not be read or parsed."""


class MediaError(PipelineError):
    """A file given to `omni generate` cannot be used, or an output cannot be written; the
    message names the file and what to do."""
