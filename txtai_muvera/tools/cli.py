"""
Command line module: `txtai-muvera index | search | info | standin | evaluate`
"""

import argparse
import importlib
import importlib.util
import sys

from .commands import UsageError
from .commands.progress import logs

# Sub-commands: modules of txtai_muvera.tools.commands with configure(subparsers) and run(args). A command imports what its
# run needs when it runs (txtai, torch, faiss), so parsing and --help stay fast
COMMANDS = ("index", "search", "info", "standin")

# Sub-commands that need an optional part of the package, wired in when the part is present: {command: part}
OPTIONAL = {"evaluate": "txtai_muvera.tools.evaluation"}

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

    parser, commands, parsers = create()
    try:
        args, unknown = parser.parse_known_args(argv)

        # Options no command knows: reported with the usage of the command they were given to
        if unknown:
            (parsers.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as error:
        return error.code if isinstance(error.code, int) else USAGE

    if not args.command:
        parser.print_help(sys.stderr)
        return USAGE

    try:
        with logs(getattr(args, "quiet", False)):
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
        (parser, {command name: module with run(args)}, {command name: command parser})
    """

    parser = argparse.ArgumentParser(
        prog="txtai-muvera",
        description="Late-interaction (ColBERT) retrieval for txtai at single-vector cost: MUVERA + exact MaxSim",
        allow_abbrev=False,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    names = list(COMMANDS)

    # Optional commands: wired in only when their part is present, so a missing part never breaks the others
    names += [name for name, part in OPTIONAL.items() if present(part)]

    commands, parsers = {}, {}
    for name in names:
        commands[name] = importlib.import_module(f"{__package__}.commands.{name}")
        parsers[name] = commands[name].configure(subparsers)

    return parser, commands, parsers


def present(path):
    """
    Checks if an optional part of the package is installed, without importing it (its package imports txtai).

    Args:
        path: package path, a direct child of txtai_muvera.tools

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
