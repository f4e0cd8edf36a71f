"""Errors the user can act on. The CLI prints their message without a traceback."""


class MritumorError(Exception):
    """Base class for errors whose message tells the user what to fix."""


class DataError(MritumorError):
    """The data cannot be used as given (missing, unreadable, inconsistent)."""
