"""User-facing errors: one line that says what is wrong and what to do, exit status 2."""


class PlmkitError(Exception):
    """A mistake in the user's input (a path, a name, a value), not a bug in plmkit.

    The CLI prints ``plmkit: error: <message>`` without a traceback and exits with status 2.
    Write the message as one sentence: what was wrong, then what to do about it.
    """

    exit_code = 2


class PluginError(PlmkitError):
    """A plugin could not be loaded or registered (broken import, duplicate objective name)."""
