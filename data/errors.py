"""The one base class for errors the user can fix from the message alone."""


class UserError(Exception):
    """A one-line message naming the file and line, or the config key, and what is wrong.
    The CLI prints it without a traceback and exits 2; nothing is half-written."""
