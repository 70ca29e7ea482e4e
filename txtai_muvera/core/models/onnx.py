"""
Onnx module
"""

import contextlib
import inspect
import json
import logging
import os
import warnings

import numpy as np
import torch

# Conditional import
try:
    import onnxruntime

    ONNX = True
except ImportError:
    ONNX = False

from ..files import remove, replacedir, tempdir

# Bumped when the exported graph changes, so stale cache folders are not reused
FORMAT = 1

# Backbones that onnxruntime's transformer optimizer fuses (attention, layer norm, GELU)
FUSIONS = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "distilbert": "bert"}


class OnnxModel:
    """
    A checkpoint's backbone run by ONNX Runtime on CPU. The backbone is exported once per checkpoint fingerprint into a cache
    folder, fused by onnxruntime's transformer optimizer and, for quantize="int8", dynamically quantized to int8 (weights per
    channel). Called like a transformers model: keyword tensors in, a tuple holding the last hidden state out.
    """

    def __init__(self, folder, config, fingerprint, quantize=None, threads=None, cache=None, trust_remote_code=False):
        """
        Loads or builds the ONNX model.

        Args:
            folder: checkpoint folder
            config: transformers config of the backbone
            fingerprint: checkpoint fingerprint, the cache key
            quantize: None for float32 or "int8"
            threads: intra-op threads, defaults to torch's thread count
            cache: cache folder, defaults to $TXTAI_MUVERA_CACHE/onnx or ~/.cache/txtai-muvera/onnx
            trust_remote_code: passed to transformers when exporting
        """

        if not ONNX:
            raise ImportError('ColBERT(backend="onnx") needs onnxruntime and onnx - install the extra: pip install "txtai-muvera[onnx]"')

        self.config = config
        self.quantize = quantize
        self.exported = False

        cache = cache if cache else os.path.join(os.environ.get("TXTAI_MUVERA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "txtai-muvera")), "onnx")
        self.folder = os.path.join(str(cache), fingerprint)

        # float32 graph first: the int8 graph is quantized from it
        path = self.build(os.path.join(self.folder, "float32"), lambda target: self.export(folder, target, trust_remote_code))
        if quantize == "int8":
            path = self.build(os.path.join(self.folder, "int8"), lambda target: self.int8(path, target))

        self.path = path

        # No spinning: idle threads sleep instead of burning a core another process (or the tokenizer) needs
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [x.name for x in self.session.get_inputs()]

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        """
        Runs the backbone.

        Args:
            input_ids: token ids tensor
            attention_mask: attention mask tensor
            token_type_ids: optional token type ids tensor

        Returns:
            (last hidden state tensor,)
        """

        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {name: feeds[name].cpu().numpy() if feeds[name] is not None else np.zeros(input_ids.shape, dtype=np.int64) for name in self.inputs}
        return (torch.from_numpy(self.session.run(None, feeds)[0]),)

    def build(self, target, writer):
        """
        Returns the model file in target, writing it first when missing. Written into a temporary sibling folder then renamed
        into place, so a reader never sees a partial export and concurrent builders do not clash.

        Args:
            target: cache folder of one variant
            writer: function writing model.onnx into the folder it is given

        Returns:
            path to model.onnx
        """

        path = os.path.join(target, "model.onnx")
        if os.path.isfile(os.path.join(target, "header.json")) and self.current(target):
            return path

        temp = tempdir(target, "export")
        try:
            writer(temp)
            with open(os.path.join(temp, "header.json"), "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}, f)

            replacedir(temp, target)
        finally:
            remove(temp)

        self.exported = True
        return path

    def current(self, target):
        """
        Checks that a cached export was written by this format version.

        Args:
            target: cache folder of one variant

        Returns:
            True if the export can be reused
        """

        try:
            with open(os.path.join(target, "header.json"), encoding="utf-8") as f:
                return json.load(f).get("format") == FORMAT and os.path.isfile(os.path.join(target, "model.onnx"))
        except (OSError, ValueError):
            return False

    def export(self, folder, target, trust_remote_code):
        """
        Exports the backbone to target/model.onnx with dynamic batch and sequence axes, then fuses it.

        Args:
            folder: checkpoint folder
            target: output folder
            trust_remote_code: passed to transformers
        """

        # Import here: only needed when exporting
        # pylint: disable=C0415
        from transformers import AutoModel

        # Eager attention exports the matmul-softmax pattern onnxruntime fuses into one Attention op
        try:
            model = AutoModel.from_pretrained(folder, attn_implementation="eager", trust_remote_code=trust_remote_code)
        except (ValueError, TypeError):
            model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)

        backbone = Backbone(model.float()).eval()
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if backbone.types else [])

        # Sample batch with a padded row, so the traced mask path is the general one
        ids = torch.full((2, 16), 100, dtype=torch.long)
        mask = torch.ones_like(ids)
        mask[1, 10:] = 0
        sample = (ids, mask, torch.zeros_like(ids)) if backbone.types else (ids, mask)

        axes = {name: {0: "batch", 1: "sequence"} for name in names + ["last_hidden_state"]}
        arguments = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        path = os.path.join(target, "model.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                backbone, sample, path, input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, **arguments
            )

        self.fuse(path)

    def fuse(self, path):
        """
        Fuses attention, layer norm and GELU subgraphs of BERT-family backbones in place. Other backbones keep the plain export
        (onnxruntime still applies its generic graph optimizations at load).

        Args:
            path: model.onnx path
        """

        kind = FUSIONS.get(getattr(self.config, "model_type", None))
        if not kind:
            return

        # pylint: disable=C0415
        from onnxruntime.transformers.optimizer import optimize_model

        heads, hidden = getattr(self.config, "num_attention_heads", 0), getattr(self.config, "hidden_size", 0)
        with quiet():
            optimized = optimize_model(path, model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=1)
            optimized.save_model_to_file(path)

    def int8(self, source, target):
        """
        Quantizes the float32 graph's matrix multiplications to int8: weights per output channel, activations per call.

        Args:
            source: float32 model.onnx
            target: output folder
        """

        # pylint: disable=C0415
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Fused ops (com.microsoft domain) have no inferred output types: float is the right default for them
        with quiet():
            quantize_dynamic(
                source,
                os.path.join(target, "model.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )


@contextlib.contextmanager
def quiet():
    """
    Silences log records below ERROR while onnxruntime's optimizer and quantizer run: they log advice (on the root logger
    too) that is not actionable for a user of this encoder.
    """

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class Backbone(torch.nn.Module):
    """
    Positional wrapper for export: returns the last hidden state only.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """
        Runs the backbone.

        Args:
            input_ids: token ids
            attention_mask: attention mask
            token_type_ids: token type ids, when the backbone takes them

        Returns:
            last hidden state
        """

        arguments = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            arguments["token_type_ids"] = token_type_ids

        return self.model(**arguments)[0]
