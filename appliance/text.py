"""Text encoder at run time: tokenizer (``tokenizers`` package) + the bundle's ONNX text encoder. No torch.

The SAME :func:`load_tokenizer` / :func:`tokenize` are used by ``trainer.model.text_tower`` during training, so the
token ids the model was trained on are byte-identical to the ones the appliance feeds the exported graph:
truncation at ``max_length`` tokens (``[CLS] ... [SEP]`` included), padding with ``[PAD]`` (id 0) to the longest text
of the batch, ``attention_mask`` 1 on real tokens. (The tokenizer.json of all-MiniLM-L6-v2 ships with fixed padding
to 128; we override it: padding to the longest text is ~5x cheaper for short prompts and gives the same embedding,
because the mean pooling ignores padded positions.)

Typical use::

    enc = TextEncoder.from_bundle(bundle)          # or TextEncoder(onnx_path, tokenizer_json, max_length)
    emb = enc.encode_texts(["no focal liver lesion"])   # [N, E] float32, L2-normalised
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from appliance.errors import TotalFMError

DEFAULT_MAX_LENGTH = 64


class TextEncoderError(TotalFMError):
    """The text encoder or its tokenizer cannot be loaded or run."""


def load_tokenizer(tokenizer_json: str | Path, max_length: int = DEFAULT_MAX_LENGTH):
    """``tokenizers.Tokenizer`` with truncation at ``max_length`` and padding to the longest text of a batch."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise TextEncoderError("the `tokenizers` package is not installed; reinstall totalfm") from exc
    path = Path(tokenizer_json)
    if not path.is_file():
        raise TextEncoderError(f"tokenizer file {path} does not exist; check the bundle (`totalfm doctor`)")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=int(max_length))
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


@lru_cache(maxsize=8)
def _cached_tokenizer(path: str, max_length: int):
    return load_tokenizer(path, max_length)


def tokenize(tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> ``input_ids`` int64 [B,T], ``attention_mask`` int64 [B,T]."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer.encode_batch([str(t) for t in texts])
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def tokenize_file(tokenizer_json: str | Path, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH):
    """Convenience: tokenize with a (cached) tokenizer loaded from a tokenizer.json path."""
    return tokenize(_cached_tokenizer(str(Path(tokenizer_json).resolve()), int(max_length)), texts)


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _open_runner(onnx_path: Path, backend: str, threads: int | None) -> Callable[[dict], dict]:
    """One small function between us and the ONNX runtime: ``appliance.backends.open_model`` (CPU/CUDA/TensorRT
    selection, thread count from the cgroup) when present, else a plain onnxruntime CPU session."""
    try:
        from appliance.backends import open_model
    except ImportError:  # pragma: no cover - backends is part of the package; kept for partial installs
        open_model = None
    if open_model is not None:
        runner = open_model(onnx_path, backend=backend, threads=threads)
        return runner.run
    import onnxruntime as ort  # pragma: no cover

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


class TextEncoder:
    """Tokenizer + exported text tower (inputs ``input_ids``/``attention_mask`` int64, output ``embedding``)."""

    def __init__(self, onnx_path: str | Path, tokenizer_json: str | Path, max_length: int = DEFAULT_MAX_LENGTH, *,
                 backend: str = "cpu", threads: int | None = None, batch_size: int = 32):
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise TextEncoderError(f"text encoder {self.onnx_path} does not exist; check the bundle (`totalfm doctor`)")
        self.max_length = int(max_length)
        self.tokenizer = load_tokenizer(tokenizer_json, self.max_length)
        self.batch_size = int(batch_size)
        self._run = _open_runner(self.onnx_path, backend, threads)

    @classmethod
    def from_bundle(cls, bundle, *, backend: str = "cpu", threads: int | None = None) -> "TextEncoder":
        spec = bundle.model("text_encoder")
        extra = dict(spec.extra or {})
        tok_rel = extra.get("tokenizer")
        if not tok_rel:
            raise TextEncoderError(f"bundle {bundle.bundle_id}: models.text_encoder.extra has no 'tokenizer' entry; "
                                   f"rebuild the bundle with `totalfm export`")
        return cls(spec.path, Path(bundle.root) / tok_rel, int(extra.get("max_length", DEFAULT_MAX_LENGTH)),
                   backend=backend, threads=threads)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """-> [N, E] float32, L2-normalised (re-normalised here so a quantised graph cannot drift off the sphere)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise TextEncoderError("encode_texts: no texts given")
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = tokenize(self.tokenizer, texts[i:i + self.batch_size])
            res = self._run({"input_ids": ids, "attention_mask": mask})
            emb = res["embedding"] if isinstance(res, dict) else res[0]
            out.append(np.asarray(emb, dtype=np.float32))
        return l2_normalise(np.concatenate(out, axis=0))


def encode_texts(texts: Sequence[str], bundle=None, **kw) -> np.ndarray:
    """Module-level convenience: encode with the given (or default) bundle's text encoder."""
    if bundle is None:
        from appliance.bundle import default_bundle_path, load_bundle

        bundle = load_bundle(default_bundle_path())
    return TextEncoder.from_bundle(bundle, **kw).encode_texts(texts)
