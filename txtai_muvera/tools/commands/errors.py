"""
Errors module
"""


class UsageError(Exception):
    """
    A user error: a missing or malformed file, an empty input, a bad option. The command line prints its message on one line
    and exits with status 2, without a traceback.
    """
