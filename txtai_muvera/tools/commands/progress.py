"""
Progress module: progress bars and log output of the command line, both silenced by --quiet
"""

import contextlib
import logging
import sys
import threading

# Loggers whose info messages the command line shows (warnings always show)
LOGGERS = ("txtai_muvera",)


def bar(iterable=None, total=None, desc=None, unit="doc", quiet=False, **kwargs):
    """
    Creates a tqdm progress bar on stderr.

    Args:
        iterable: items to iterate, optional
        total: number of items, optional
        desc: bar label
        unit: item unit
        quiet: disable the bar
        kwargs: other tqdm options

    Returns:
        tqdm
    """

    # pylint: disable=C0415
    from tqdm import tqdm

    # None: shown on a terminal only, so output piped or captured holds no bar
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def stage(desc, quiet=False):
    """
    Shows a step that reports no progress of its own (training a codec, building an index, saving) as a bar with its elapsed
    time, until the block ends.

    Args:
        desc: step label
        quiet: show nothing
    """

    with bar(total=None, desc=desc, unit="step", quiet=quiet, bar_format="{desc}: {elapsed}") as progress:
        with ticking(progress):
            yield progress


@contextlib.contextmanager
def ticking(progress):
    """
    Refreshes a bar twice a second while the block runs, so its elapsed time moves during long steps without updates.

    Args:
        progress: tqdm bar
    """

    if progress.disable:
        yield
        return

    done = threading.Event()

    def refresh():
        while not done.wait(0.5):
            progress.refresh()

    thread = threading.Thread(target=refresh, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def logs(quiet=False):
    """
    Shows the package's info logs on stderr while a command runs, or only its warnings when quiet. Third-party progress bars
    (Hugging Face Hub downloads) are silenced when quiet.

    Args:
        quiet: warnings only, no progress bars
    """

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if quiet else logging.INFO)

    hub = hubbars(False) if quiet else None
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        if hub:
            hubbars(True)


def hubbars(enable):
    """
    Enables or disables the Hugging Face Hub's download progress bars.

    Args:
        enable: True to enable

    Returns:
        True if the Hub's bars were enabled before this call
    """

    # pylint: disable=C0415
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        return False

    enabled = not are_progress_bars_disabled()
    if enable:
        enable_progress_bars()
    else:
        disable_progress_bars()

    return enabled
