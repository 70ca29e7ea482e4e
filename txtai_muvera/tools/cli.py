"""
Command line module: `txtai-muvera index | search | info | standin | evaluate`
"""

import argparse
import importlib
import importlib.util
import sys

from .commands import UsageError
from .commands import index, info, search, standin

# Sub-commands always available
COMMANDS = {"index": index, "search": search, "info": info, "standin": standin}

# Sub-commands from optional parts of the package, wired in when the module is present
OPTIONAL = {"evaluate": "txtai_muvera.tools.evaluation.cli"}

# Exit status for user errors (argparse uses the same)
USAGE = 2


def main(argv=None):
    """
    Runs the command line.

    Args:
        argv: arguments, defaults to sys.argv[1:]

    Returns:
        exit status: 0 on success, 2 on a user error (one line on stderr, no traceback)
    """

    parser, commands = create()
    try:
        args = parser.parse_args(argv)
    except SystemExit as error:
        return error.code if isinstance(error.code, int) else USAGE

    if not args.command:
        parser.print_help(sys.stderr)
        return USAGE

    try:
        result = commands[args.command].run(args)
    except KeyboardInterrupt:
        print("txtai-muvera: interrupted", file=sys.stderr)
        return 130
    # pylint: disable=W0718
    except Exception as error:
        message = usermessage(error)
        if message is None or args.traceback:
            raise
        print(f"txtai-muvera {args.command}: error: {message}", file=sys.stderr)
        return USAGE

    # evaluate's run may return an exit status of its own
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def create():
    """
    Builds the argument parser.

    Returns:
        (parser, {command name: module with run(args)})
    """

    parser = argparse.ArgumentParser(
        prog="txtai-muvera", description="Late-interaction (ColBERT) retrieval for txtai at single-vector cost: MUVERA + exact MaxSim"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands = dict(COMMANDS)
    for module in commands.values():
        module.configure(subparsers)

    # Optional commands: imported only when present, so a missing part never breaks the others
    for name, path in OPTIONAL.items():
        if present(path):
            commands[name] = importlib.import_module(path)
            commands[name].configure(subparsers)

    return parser, commands


def present(path):
    """
    Checks if an optional module is part of this installation, without importing it.

    Args:
        path: module path

    Returns:
        True if present
    """

    try:
        return importlib.util.find_spec(path) is not None
    except ModuleNotFoundError:
        return False


def usermessage(error):
    """
    Finds the message to show for a user error: a bad file, option or checkpoint. txtai's factories hide the real error
    behind ImportError("Unable to resolve ..."), so the chain of causes is searched.

    Args:
        error: exception

    Returns:
        one-line message, or None when error is a bug to show with its traceback
    """

    while error is not None:
        if isinstance(error, (UsageError, OSError, ValueError)) or (isinstance(error, ImportError) and "Unable to resolve" not in str(error)):
            message = " ".join(str(error).split())
            if isinstance(error, FileNotFoundError) and error.filename and error.filename not in message:
                message = f"{message}: {error.filename}"
            return message or type(error).__name__

        error = error.__cause__

    return None


if __name__ == "__main__":
    sys.exit(main())
