"""Pick and load the engine class a model config names (runtimes are imported only when used),
and check beforehand, cheaply, what can be known without loading."""

from __future__ import annotations

import importlib.util
import json

from engines.base import Engine
from engines.config import ModelConfig
from engines.errors import ModelLoadError

# The module each engine imports, and what installs it.
_RUNTIMES = {
    "gguf": ("llama_cpp", "llama-cpp-python"),
    "onnx": ("onnxruntime_genai", "the cpu, cuda or directml extra"),
}


def check_loadable(config: ModelConfig) -> None:
    """What can be known about a model without loading it: the file or folder is there and
    readable, of the right kind, and its engine is installed. The pool runs this before it
    unloads anything to make room, so a model that cannot load never evicts a healthy one."""
    path = config.path
    try:
        if config.engine == "gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            with path.open("rb") as file:
                if file.read(4) != b"GGUF":
                    raise ModelLoadError(f"{path} is not a GGUF file (no GGUF header)")
        else:
            genai_config = path / "genai_config.json"
            if not genai_config.is_file():
                raise ModelLoadError(
                    f"{path} is not an ONNX Runtime GenAI model folder (no genai_config.json); "
                    "convert a model with `slmserve convert`"
                )
            json.loads(genai_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from error
    module, install = _RUNTIMES[config.engine]
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(
            f"{config.engine} models need {module}, which is not installed ({install})"
        )


def load_engine(config: ModelConfig) -> Engine:
    """Load and return the engine for `config`; raises ModelLoadError when it cannot."""
    if config.engine == "gguf":
        from engines.gguf import GGUFEngine

        return GGUFEngine(config)
    from engines.onnx import OnnxEngine

    return OnnxEngine(config)
