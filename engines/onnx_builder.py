"""onnxruntime-genai's model builder, run on configs in the layout it reads.

`python -m engines.onnx_builder ARGS` is `python -m onnxruntime_genai.models.builder ARGS` with
one difference: the Hugging Face config the builder loads is normalised first. transformers 5
keeps RoPE settings per attention layer type (`rope_parameters: {"full_attention": {...},
"sliding_attention": {...}}`, Gemma 3), where the builder of onnxruntime-genai 0.18 reads one
flat `rope_parameters` with a `rope_type` and the local base frequency as
`rope_local_base_freq` (it failed with KeyError 'rope_type', then AttributeError). The builder
loads the config inside its own `__main__` block, so the normalisation wraps
`AutoConfig.from_pretrained` for this process only; `slmserve convert` runs it as a subprocess.
"""

from __future__ import annotations

import runpy
from typing import Any

# Architectures whose builder reads the per-layer-type layout itself.
READS_PER_LAYER_ROPE = ("Gemma4",)


def normalise_config(config: Any) -> Any:
    """Flatten per-layer-type RoPE settings into the older layout; other configs pass as is."""
    architectures = list(getattr(config, "architectures", None) or [])
    if any(name.startswith(READS_PER_LAYER_ROPE) for name in architectures):
        return config
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or not rope:
        return config
    if not all(isinstance(value, dict) for value in rope.values()):
        rope.setdefault("rope_type", "default")
        return config
    global_rope = dict(rope.get("full_attention") or next(iter(rope.values())))
    global_rope.setdefault("rope_type", "default")
    local_rope = rope.get("sliding_attention")
    config.rope_parameters = global_rope
    if "rope_theta" in global_rope:
        config.rope_theta = global_rope["rope_theta"]
    if isinstance(local_rope, dict) and "rope_theta" in local_rope:
        config.rope_local_base_freq = local_rope["rope_theta"]
    return config


def main() -> None:
    from transformers import AutoConfig

    load = AutoConfig.from_pretrained

    def load_normalised(*args: Any, **kwargs: Any) -> Any:
        return normalise_config(load(*args, **kwargs))

    setattr(AutoConfig, "from_pretrained", load_normalised)  # noqa: B010 (a method, replaced)
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
