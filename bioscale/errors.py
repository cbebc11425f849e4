"""User-facing errors: the CLI prints their message as one paragraph, without a traceback."""


class BioscaleError(Exception):
    """Bad input that the user can fix; the message says what to do."""


class GridError(BioscaleError):
    """A grid file that cannot be loaded, validated or expanded."""


class DataError(BioscaleError):
    """A dataset that is missing, corrupt or refused."""
