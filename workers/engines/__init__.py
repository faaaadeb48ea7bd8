"""Engines run a batch of chats on one set of weights.

`create_engine(spec)` builds one by name. Engine modules are imported only when
asked for, so a missing optional backend (vLLM, LiteLLM) fails only when used.
An engine with a stand-in (FALLBACKS) is replaced by it when its library is missing.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import replace

from workers.engines.base import Engine, EngineError, EngineSpec

log = logging.getLogger(__name__)

ENGINES: dict[str, str] = {
    "local": "workers.engines.local",
    "llamacpp": "workers.engines.llamacpp",
    "vllm": "workers.engines.vllm",
    "openai": "workers.engines.openai",
}
"""engine name -> module; the module exposes `ENGINE_CLASS`, a subclass of Engine."""

FALLBACKS: dict[str, tuple[str, str]] = {
    "llamacpp": ("llama_cpp", "local"),
}
"""engine -> (the library it needs, the engine that serves the same weights without it). llama-cpp-python is
built on the machine (scripts/setup_llamacpp.sh) and may be missing; the local engine reads the same GGUF."""


def engine_class(name: str) -> type[Engine]:
    try:
        module_name = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine '{name}' (known: {', '.join(sorted(ENGINES))})") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(f"engine '{name}' is not available: {exc}") from exc
    cls = getattr(module, "ENGINE_CLASS", None)
    if cls is None:
        raise EngineError(f"module {module_name} does not define ENGINE_CLASS")
    return cls


def create_engine(spec: EngineSpec) -> Engine:
    """An unloaded engine for `spec`; call `load()` before `generate()`."""
    if spec.engine in FALLBACKS:
        library, stand_in = FALLBACKS[spec.engine]
        try:
            importlib.import_module(library)
        except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its native library does not load
            log.warning("engine '%s' for %s is unavailable (%s: %s); serving it with the '%s' engine instead",
                        spec.engine, spec.model, type(exc).__name__, exc, stand_in)
            spec = replace(spec, engine=stand_in)
    return engine_class(spec.engine)(spec)


__all__ = ["ENGINES", "Engine", "EngineError", "EngineSpec", "create_engine", "engine_class"]
