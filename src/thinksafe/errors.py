"""Errors with messages a user can act on. The CLI prints them as one line and exits non-zero."""


class ThinksafeError(Exception):
    """Base class: anything the user can fix (bad config, missing file, bad data)."""


class ConfigError(ThinksafeError):
    pass


class DataError(ThinksafeError):
    pass


class TemplateError(ThinksafeError):
    pass


class MissingDependency(ThinksafeError):
    pass


class GuardServerError(ThinksafeError):
    """A served guard is unreachable, unhealthy, or answered something unusable."""
