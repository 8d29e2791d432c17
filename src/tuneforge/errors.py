"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class TuneforgeError(Exception):
    """Base class: the message says what was wrong, where, and how to fix it."""


class ConfigError(TuneforgeError):
    """A bad key, value or combination of settings."""


class DataError(TuneforgeError):
    """A dataset that cannot be read, parsed or converted."""


class TemplateError(TuneforgeError):
    """A chat template that is unknown or cannot render a conversation."""


class ModelError(TuneforgeError):
    """A model source that cannot be resolved or loaded."""


class ExportError(TuneforgeError):
    """A model, adapter or destination that cannot be exported as asked."""
