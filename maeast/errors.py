"""The one exception type users see as a one-line message instead of a traceback."""


class MaeastError(Exception):
    """A problem with the user's input or setup: the message names the thing and the fix.

    The CLI prints it as a single line and exits with status 2; library callers can catch it.
    """
