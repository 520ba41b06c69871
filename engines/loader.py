"""Pick and load the engine class a model config names (runtimes are imported only when used)."""

from __future__ import annotations

from engines.base import Engine
from engines.config import ModelConfig


def load_engine(config: ModelConfig) -> Engine:
    """Load and return the engine for `config`; raises ModelLoadError when it cannot."""
    if config.engine == "gguf":
        from engines.gguf import GGUFEngine

        return GGUFEngine(config)
    from engines.onnx import OnnxEngine

    return OnnxEngine(config)
