"""Errors a user can act on.

Every error that is the user's to fix (a missing file, a tensor of the wrong shape, an
unreadable image) is an `OpenGPT4Error`: the CLI prints its message on one line and exits
with status 1 instead of dumping a traceback. Bugs stay ordinary exceptions.
"""


class OpenGPT4Error(Exception):
    """Base class: the message names the thing that is wrong."""


class ConfigError(OpenGPT4Error, ValueError):
    """An invalid model or vision configuration."""


class CheckpointError(OpenGPT4Error):
    """A checkpoint directory that is missing, corrupt or does not match its config."""


class ImageError(OpenGPT4Error, ValueError):
    """An image that cannot be read, or image placeholders that do not match the images."""


class TokenizerError(OpenGPT4Error, ValueError):
    """Bad tokenizer input: an unknown role, a malformed chat message."""
