"""opengpt4: the GPT-4 system in miniature."""

__version__ = "0.1.0"
