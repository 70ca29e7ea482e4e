"""
ColBERT module
"""

import logging

import numpy as np
import torch

from .checkpoint import SETTINGS, Checkpoint
from .onnx import OnnxModel
from .settings import resolve

# Activation functions for projection heads
ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu, "sigmoid": torch.sigmoid}

# Logging instance
logger = logging.getLogger(__name__)

# Inference backends and quantization modes
BACKENDS = ("torch", "onnx")
QUANTIZE = (None, "int8")


class ColBERT:
    """
    Late-interaction encoder: turns texts into L2-normalised token matrices (tokens x dim), reproducing PyLate's encoding
    (prefix tokens, [MASK] query expansion, document skiplist) or, with compatible=True, txtai's LatePooling.
    """

    # pylint: disable=R0913,R0914
    def __init__(
        self,
        path,
        device=None,
        half=False,
        threads=None,
        batch=32,
        compatible=False,
        trust_remote_code=False,
        backend="torch",
        quantize=None,
        cache=None,
        **settings,
    ):
        """
        Loads a late-interaction checkpoint.

        Args:
            path: local folder or Hugging Face Hub id (PyLate or Stanford layout, or a plain transformers model)
            device: "cpu", "cuda", "cuda:N" or a torch.device, defaults to cuda when available
            half: 16-bit inference: float16 weights on GPU; on CPU bfloat16 autocast (matrix products in bfloat16, fast on CPUs with
                  AVX512-BF16 or AMX, weights, layer norms and softmax stay float32)
            threads: number of CPU threads torch uses (process wide), None keeps the current setting
            batch: default model batch size
            compatible: if True, encode like txtai 9.14's LatePooling (text prefixes, no expansion, no skiplist)
            trust_remote_code: passed to transformers when loading the model and tokenizer
            backend: "torch" (reference, float32) or "onnx" (ONNX Runtime on CPU, needs the onnx extra)
            quantize: None or "int8" (onnx backend: int8 weights per channel, activations quantized per text)
            cache: folder for ONNX exports, defaults to ~/.cache/txtai-muvera/onnx (or $TXTAI_MUVERA_CACHE/onnx)
            settings: overrides for query_prefix, document_prefix, query_length, document_length, do_query_expansion,
                      attend_to_expansion_tokens, skiplist_words
        """

        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"Unknown ColBERT setting(s) {unknown}, accepted: {list(SETTINGS)}")

        self.batch = self.positive(batch, "batch")
        self.backend, self.quantize = self.resolvebackend(backend, quantize, device, half)
        if threads is not None:
            torch.set_num_threads(self.positive(threads, "threads"))

        # Import here to keep package import light
        # pylint: disable=C0415
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.checkpoint = Checkpoint(path)
        self.path = str(path)
        self.device = self.resolvedevice(device)
        self.half = bool(half)
        self.autocast = self.half and self.device.type == "cpu"
        self.compatible = bool(compatible)
        self.fingerprint = self.checkpoint.fingerprint()

        # Quiet loading: no progress bars or load reports
        verbosity, progress = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            folder = self.checkpoint.folder
            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            if self.backend == "onnx":
                # Exported once per fingerprint, then loaded from the cache
                config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
                self.model = OnnxModel(folder, config, self.fingerprint, self.quantize, threads, cache, trust_remote_code)
            else:
                self.model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)
        finally:
            transformers.logging.set_verbosity(verbosity)
            if progress:
                transformers.logging.enable_progress_bar()

        # Inference in float32, float16 weights on GPU or bfloat16 autocast on CPU when asked
        if self.backend == "torch":
            self.model.eval().to(self.device)
            if self.half and not self.autocast:
                self.model.half()
            else:
                self.model.float()

        if self.autocast and not bfloat16():
            logger.warning("half=True on a CPU without native bfloat16 (AVX512-BF16 or AMX): encoding may be slower than float32")

        # Projection heads as (weight, bias, residual, activation) tensors
        dtype = torch.float16 if self.half and not self.autocast else torch.float32
        self.heads = []
        for head in self.checkpoint.heads:
            tensors = {key: torch.from_numpy(value.copy()).to(self.device, dtype) for key, value in head["weights"].items()}
            self.heads.append((tensors["linear.weight"], tensors.get("linear.bias"), tensors.get("residual.weight"), head["activation"]))

        self.dim = int(self.heads[-1][0].shape[0]) if self.heads else int(self.model.config.hidden_size)
        self.options = resolve(self.checkpoint, self.tokenizer, self.compatible, settings)
        self.settings = self.options["settings"]
        self.truncated = 0

    def encode(self, texts, category="data", batch=None):
        """
        Encodes texts into token matrices.

        Args:
            texts: list of strings
            category: "query" or "data" (txtai's names), "document" is accepted for "data"
            batch: model batch size, defaults to the constructor's

        Returns:
            list of float32 arrays, one (tokens x dim) matrix per text
        """

        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")

        for x, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{x}] is {type(text).__name__}, expected str")

        if category not in ("query", "data", "document", None):
            raise ValueError(f"Unknown category {category!r}, accepted: 'query', 'data'")

        query = category == "query"
        batch = self.positive(batch, "batch") if batch is not None else self.batch

        # int8 activations are scaled per call: one text per call keeps a text's encoding independent of its batch
        batch = 1 if self.quantize else batch

        self.truncated = 0
        if not texts:
            return []

        # Tokenize everything once, then run batches of similar length
        ids = self.tokenize(list(texts), query)
        order = np.argsort([-len(x) for x in ids], kind="stable")

        results = [None] * len(ids)
        for start in range(0, len(order), batch):
            indices = order[start : start + batch]
            for index, matrix in zip(indices, self.run([ids[x] for x in indices], query)):
                results[index] = matrix

        return results

    def tokenize(self, texts, query):
        """
        Tokenizes texts with truncation, inserting the prefix token after the first token (PyLate mode). Counts
        truncated texts in self.truncated.

        Args:
            texts: list of strings
            query: True for queries

        Returns:
            list of token id lists
        """

        options = self.options
        prefix = options["query_prefix_id"] if query else options["document_prefix_id"]
        length = self.settings["query_length"] if query else self.settings["document_length"]

        if self.compatible:
            # txtai prepends the prefix as text and counts it in the length
            text = options["query_prefix_text"] if query else options["document_prefix_text"]
            texts = [f"{text}{x}" for x in texts] if text else texts
            length = options["query_maxlength"] if query else options["document_maxlength"]
        else:
            # sentence-transformers strips (and optionally lowercases) texts before tokenizing
            texts = [x.strip() for x in texts]
            texts = [x.lower() for x in texts] if self.checkpoint.lowercase else texts
            length = length - 1 if prefix is not None else length

        if length is None:
            ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False)["input_ids"]
        else:
            # Overflowing rows flag the texts that were cut
            tokens = self.tokenizer(
                texts, add_special_tokens=True, truncation=True, max_length=length, return_overflowing_tokens=True, return_attention_mask=False
            )
            ids, cut = [None] * len(texts), set()
            for row, sample in zip(tokens["input_ids"], tokens["overflow_to_sample_mapping"]):
                if ids[sample] is None:
                    ids[sample] = row
                else:
                    cut.add(sample)

            self.truncated += len(cut)

        if prefix is not None:
            ids = [row[:1] + [prefix] + row[1:] for row in ids]

        return [list(row) for row in ids]

    @torch.inference_mode()
    def run(self, ids, query):
        """
        Runs a batch of token ids through the model and projection heads.

        Args:
            ids: list of token id lists
            query: True for queries

        Returns:
            list of float32 arrays
        """

        options, settings = self.options, self.settings
        expansion = query and settings["do_query_expansion"]
        width = max(settings["query_length"], max(len(x) for x in ids)) if expansion else max(len(x) for x in ids)

        # Pad with the padding id (the [MASK] token for PyLate), attention only on real tokens unless configured
        lengths = torch.tensor([len(x) for x in ids])
        inputs = torch.full((len(ids), width), options["pad_id"], dtype=torch.long)
        for x, row in enumerate(ids):
            inputs[x, : len(row)] = torch.tensor(row, dtype=torch.long)

        real = torch.arange(width)[None, :] < lengths[:, None]
        attention = torch.ones_like(inputs) if expansion and settings["attend_to_expansion_tokens"] else real.long()

        arguments = {"input_ids": inputs.to(self.device), "attention_mask": attention.to(self.device)}
        if options["token_type_ids"]:
            arguments["token_type_ids"] = torch.zeros_like(arguments["input_ids"])

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            outputs = self.model(**arguments)[0]
            outputs = self.project(outputs)

        # Rows kept: every position for expanded queries, real non-skiplist tokens for documents
        if expansion:
            keep = torch.ones_like(real)
        elif query or not options["skiplist_ids"]:
            keep = real
        else:
            keep = real & ~torch.isin(inputs, torch.tensor(options["skiplist_ids"], dtype=torch.long))

        outputs = torch.nn.functional.normalize(outputs.float(), p=2, dim=-1).cpu().numpy()
        keep = keep.numpy()
        return [np.ascontiguousarray(outputs[x][keep[x]], dtype=np.float32) for x in range(len(ids))]

    def project(self, outputs):
        """
        Applies the projection heads in order.

        Args:
            outputs: token outputs of the backbone

        Returns:
            projected token outputs
        """

        for weight, bias, residual, activation in self.heads:
            if self.compatible:
                # txtai sums linear and residual weights, without bias or activation
                result = torch.nn.functional.linear(outputs, weight)
            else:
                result = ACTIVATIONS[activation](torch.nn.functional.linear(outputs, weight, bias))

            outputs = result + torch.nn.functional.linear(outputs, residual) if residual is not None else result

        return outputs

    def resolvebackend(self, backend, quantize, device, half):
        """
        Validates the backend and quantization options.

        Args:
            backend: "torch" or "onnx"
            quantize: None or "int8"
            device: requested device
            half: half precision flag

        Returns:
            (backend, quantize)
        """

        if not isinstance(half, (bool, np.bool_)):
            raise ValueError(f"half must be True or False, got {half!r}")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}, accepted: {list(BACKENDS)}")
        if quantize not in QUANTIZE:
            raise ValueError(f"Unknown quantize {quantize!r}, accepted: {list(QUANTIZE)}")
        if quantize and backend != "onnx":
            raise ValueError(f"quantize={quantize!r} needs backend='onnx', got backend={backend!r}")
        if backend == "onnx" and (half or (device is not None and str(device).split(":")[0] != "cpu")):
            raise ValueError(f"backend='onnx' runs on CPU in float32 or int8, got device={device!r}, half={half!r}: use backend='torch'")

        return backend, quantize

    def resolvedevice(self, device):
        """
        Resolves the torch device.

        Args:
            device: device name, torch.device or None

        Returns:
            torch.device
        """

        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() and self.backend == "torch" else "cpu")

        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"Invalid device {device!r}, accepted: 'cpu', 'cuda', 'cuda:N'") from e

        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"Unsupported device {device}, accepted: 'cpu', 'cuda', 'cuda:N'")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"Device {device} requested but CUDA is not available, use device='cpu'")

        return device

    @staticmethod
    def positive(value, name):
        """
        Validates a positive integer option.

        Args:
            value: option value
            name: option name

        Returns:
            value
        """

        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

        return int(value)


def bfloat16():
    """
    Checks whether this CPU runs bfloat16 matrix products natively (oneDNN with AVX512-BF16 or AMX).

    Returns:
        True if supported, False otherwise or when the check is unavailable
    """

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # pylint: disable=W0212
    except (AttributeError, RuntimeError):
        return False
