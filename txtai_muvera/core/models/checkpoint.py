"""
Checkpoint module
"""

import hashlib
import json
import os
import string

from .hub import CheckpointError, islocal, locate

# Files worth fetching from the Hugging Face Hub for a late-interaction checkpoint
PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "artifact.metadata", "*_Dense/*"]

# Settings read from a checkpoint and overridable by keyword
SETTINGS = (
    "query_prefix",
    "document_prefix",
    "query_length",
    "document_length",
    "do_query_expansion",
    "attend_to_expansion_tokens",
    "skiplist_words",
)

# Activation functions allowed in PyLate / sentence-transformers Dense heads
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}


class Checkpoint:
    """
    Reads a late-interaction checkpoint: a local folder or a Hugging Face Hub id in the PyLate layout (modules.json,
    *_Dense heads, config_sentence_transformers.json), the Stanford layout (artifact.metadata, HF_ColBERT architecture,
    linear.weight inside the main weights) or a plain transformers folder (no projection head).
    """

    def __init__(self, path):
        """
        Locates and reads a checkpoint.

        Args:
            path: local folder or Hugging Face Hub id
        """

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a string or os.PathLike, got {type(path).__name__}")

        self.path = str(path)
        self.folder = locate(self.path, PATTERNS)

        # Required files: config, weights and a tokenizer
        self.check()

        self.config = self.json("config.json")
        self.modules = self.json("modules.json")
        self.layout = self.detect()
        self.heads = self.readheads()
        self.defaults = self.readsettings()
        self.lowercase = bool((self.json("sentence_bert_config.json") or {}).get("do_lower_case", False))

    def check(self):
        """
        Checks that a checkpoint folder has a config, weights and tokenizer files.
        """

        missing = []
        if not self.exists("config.json"):
            missing.append("config.json")
        if not self.exists("model.safetensors") and not self.exists("model.safetensors.index.json"):
            missing.append("model.safetensors (or model.safetensors.index.json)")
        if not any(self.exists(x) for x in ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "vocab.json")):
            missing.append("tokenizer.json (or vocab.txt / tokenizer.model / vocab.json)")

        if missing:
            raise CheckpointError(f"Checkpoint at '{self.path}' is incomplete: expected {', '.join(missing)} in {self.folder}")

    def detect(self):
        """
        Detects the checkpoint layout.

        Returns:
            "pylate", "stanford" or "plain"
        """

        if self.modules:
            return "pylate"

        architectures = (self.config or {}).get("architectures") or []
        if "HF_ColBERT" in architectures or self.exists("artifact.metadata"):
            return "stanford"

        return "plain"

    def readheads(self):
        """
        Reads the projection heads, applied in order.

        Returns:
            list of dicts with weights (dict of tensors names to numpy arrays) and activation name
        """

        # Import here to keep module import light
        from safetensors.numpy import load_file
        from safetensors import safe_open

        heads = []
        if self.layout == "pylate":
            for module in self.modules:
                name = module.get("path", "")
                if not (name.endswith("_Dense") or str(module.get("type", "")).endswith("Dense")) or not name:
                    continue

                weights = os.path.join(self.folder, name, "model.safetensors")
                if not os.path.exists(weights):
                    raise CheckpointError(f"Checkpoint at '{self.path}' is incomplete: expected {name}/model.safetensors in {self.folder}")

                config = self.json(f"{name}/config.json") or {}
                activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
                if activation not in ACTIVATIONS:
                    raise ValueError(f"Unsupported activation {activation} in {name}/config.json, accepted: {sorted(ACTIVATIONS)}")

                tensors = load_file(weights)
                if "linear.weight" not in tensors:
                    raise CheckpointError(f"{name}/model.safetensors in '{self.path}' has no linear.weight tensor (found {sorted(tensors)})")

                heads.append({"name": name, "weights": tensors, "activation": ACTIVATIONS[activation]})

        elif self.layout == "stanford":
            files = self.weightfiles()
            for weights in files:
                with safe_open(weights, framework="np") as f:
                    if "linear.weight" in f.keys():
                        heads.append({"name": "linear", "weights": {"linear.weight": f.get_tensor("linear.weight")}, "activation": "identity"})

            if not heads:
                raise CheckpointError(f"Stanford checkpoint at '{self.path}' has no linear.weight tensor in {[os.path.basename(x) for x in files]}")

        return heads

    def readsettings(self):
        """
        Reads encoding settings stored with the checkpoint, filling PyLate's defaults.

        Returns:
            dict of settings
        """

        settings = {}
        if self.layout == "pylate":
            config = self.json("config_sentence_transformers.json") or {}
            settings = {key: config[key] for key in SETTINGS if key in config}
            defaults = ("[Q] ", "[D] ")

        elif self.layout == "stanford":
            metadata = self.json("artifact.metadata") or {}
            names = {
                "query_token_id": "query_prefix",
                "doc_token_id": "document_prefix",
                "query_maxlen": "query_length",
                "doc_maxlen": "document_length",
                "attend_to_mask_tokens": "attend_to_expansion_tokens",
            }

            # Same rule as PyLate: only truthy values replace the defaults
            settings = {target: metadata[source] for source, target in names.items() if metadata.get(source)}
            defaults = ("[unused0]", "[unused1]")

        else:
            # No settings file: no prefix tokens
            defaults = ("", "")

        result = {
            "query_prefix": defaults[0],
            "document_prefix": defaults[1],
            "query_length": 32,
            "document_length": 180,
            "do_query_expansion": True,
            "attend_to_expansion_tokens": False,
            "skiplist_words": list(string.punctuation),
        }
        # Keep the stored values as they are: txtai-compatible encoding reads them without defaults
        self.stored = dict(settings)

        result.update({key: value for key, value in settings.items() if value is not None})
        return result

    def fingerprint(self):
        """
        Builds a short stable hash of the checkpoint files: names, sizes, small config files in full and the first
        megabyte of each weights file.

        Returns:
            hex string
        """

        digest = hashlib.sha256()
        for root, _, files in sorted(os.walk(self.folder)):
            for name in sorted(files):
                full = os.path.join(root, name)
                relative = os.path.relpath(full, self.folder).replace(os.sep, "/")
                if relative.startswith(".") or "/." in relative:
                    continue

                size = os.path.getsize(full)
                digest.update(f"{relative}:{size}\n".encode("utf-8"))
                with open(full, "rb") as f:
                    digest.update(f.read(1 << 20))

        return digest.hexdigest()[:16]

    def weightfiles(self):
        """
        Lists the main weights files.

        Returns:
            list of file paths
        """

        index = self.json("model.safetensors.index.json")
        if index:
            return [os.path.join(self.folder, x) for x in sorted(set(index.get("weight_map", {}).values()))]

        return [os.path.join(self.folder, "model.safetensors")]

    def exists(self, name):
        """
        Checks if a file exists in the checkpoint folder.

        Args:
            name: relative file name

        Returns:
            True if it exists
        """

        return os.path.isfile(os.path.join(self.folder, name))

    def json(self, name):
        """
        Reads a JSON file from the checkpoint folder.

        Args:
            name: relative file name

        Returns:
            parsed JSON or None when missing
        """

        return readjson(os.path.join(self.folder, name))


def readjson(path):
    """
    Reads a JSON file.

    Args:
        path: file path

    Returns:
        parsed JSON or None when missing
    """

    if not os.path.isfile(path):
        return None

    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"Invalid JSON in {path}: {e}") from e


def islateinteraction(path):
    """
    Checks if path is a late-interaction checkpoint, with the same rule as txtai's PoolingFactory: a 1_Dense/config.json
    without a 1_Pooling/config.json, or an HF_ColBERT architecture in config.json.

    Args:
        path: local folder or Hugging Face Hub id

    Returns:
        True if path is a late-interaction checkpoint
    """

    if not isinstance(path, (str, os.PathLike)):
        return False

    path = str(path)
    if os.path.isfile(path) or (islocal(path) and not os.path.isdir(os.path.expanduser(path))):
        return False

    folder = locate(path, ["config.json", "1_Pooling/config.json", "1_Dense/config.json"])
    if os.path.isfile(os.path.join(folder, "1_Pooling", "config.json")):
        return False

    if os.path.isfile(os.path.join(folder, "1_Dense", "config.json")):
        return True

    config = readjson(os.path.join(folder, "config.json")) or {}
    return "HF_ColBERT" in (config.get("architectures") or [])
