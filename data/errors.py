"""The errors a user can fix from the message alone, in a few kinds.

The CLI prints any ``UserError`` as one line and exits 2, without a traceback. Raise the kind
that says where the fix lies; the message names the file and line, or the config key.
The kinds are also ``ValueError``s, so code that checks a value with ``except ValueError`` keeps working.
"""


class UserError(Exception):
    """A one-line message naming the file and line, or the config key, and what is wrong.
    The CLI prints it without a traceback and exits 2; nothing is half-written."""


class ConfigError(UserError, ValueError):
    """A config file, key or value, or a command-line flag, is wrong: name the file and key
    (``run.yaml: sampling.temperature: ...``) or the flag (``--shard '3'``)."""


class InputError(UserError, ValueError):
    """The data a stage reads is wrong: a bad line (``path:line: why``, naming the field), a
    missing or unfinished input folder, an input made for something else."""


class OutputError(UserError, ValueError):
    """The output folder cannot be used as asked: it holds a run with another config or
    another stage, another shard count, a corrupt part, or it is not a folder."""


def not_utf8(err: UnicodeDecodeError) -> str:
    """Why a line cannot be read, naming the first bad byte: the file is in another encoding."""
    return f"not UTF-8 (byte 0x{err.object[err.start]:02x}); save the file as UTF-8"
