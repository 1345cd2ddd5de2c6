"""The user-error type the command line prints as one line (see :mod:`difflab.cli`).

It lives in its own module so that ``python -m difflab.cli`` (where the CLI module runs as
``__main__``) and the commands that raise it share one class.
"""


class UserError(Exception):
    """An error caused by the user's input: printed as one message, without a traceback."""
