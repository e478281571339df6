"""The one exception type for bad user input."""


class SftError(Exception):
    """A problem with the user's input or config, stated in one line with the fix.

    The entry points print the message alone (no traceback) and exit with status 2.
    """
