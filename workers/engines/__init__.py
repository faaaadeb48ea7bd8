"""Engines run a batch of chats on one set of weights.

`create_engine(spec)` builds one by name. Engine modules are imported only when
asked for, so a missing optional backend (vLLM, LiteLLM) fails only when used.
"""

from __future__ import annotations

import importlib

from workers.engines.base import Engine, EngineError, EngineSpec

ENGINES: dict[str, str] = {
    "local": "workers.engines.local",
    "llamacpp": "workers.engines.llamacpp",
    "vllm": "workers.engines.vllm",
    "openai": "workers.engines.openai",
}
"""engine name -> module; the module exposes `ENGINE_CLASS`, a subclass of Engine."""


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
    return engine_class(spec.engine)(spec)


__all__ = ["ENGINES", "Engine", "EngineError", "EngineSpec", "create_engine", "engine_class"]
