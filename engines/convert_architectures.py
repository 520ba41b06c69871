"""Which architectures `slmserve convert` can turn into ONNX Runtime GenAI models, known before
any slow step. Both tables follow the pinned tools (transformers 5, onnxruntime-genai 0.18);
tests/engines/test_convert_architectures.py checks them against the installed code, and the
README's conversion report says which of them are proven by a conversion test.
"""

from __future__ import annotations

# Text decoders that onnxruntime-genai 0.18's builder dispatches on (its create_model); its
# vision, audio and speech models (Gemma 3/4 and Mistral 3 "ForConditionalGeneration" among
# them) are left out: slmserve serves text.
BUILDER_ARCHITECTURES = frozenset(
    {
        "ChatGLMForConditionalGeneration",
        "ChatGLMModel",
        "Ernie4_5ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GptOssForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "HunYuanDenseV1ForCausalLM",
        "InternLM2ForCausalLM",
        "Lfm2ForCausalLM",
        "Lfm2MoeForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "NemotronForCausalLM",
        "OlmoForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "Phi3SmallForCausalLM",
        "PhiMoEForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "SmolLM3ForCausalLM",
    }
)

# GGUF `general.architecture` -> the architecture transformers' GGUF loader reads it as, for the
# ones that loader reads AND the builder builds. (transformers reads a llama GGUF whose name
# says mistral as MistralForCausalLM: the builder takes both.)
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "nemotron": "NemotronForCausalLM",
    "lfm2": "Lfm2ForCausalLM",
    "gpt-oss": "GptOssForCausalLM",
}

# What transformers' GGUF loader reads but the builder cannot build (or builds only in a
# multimodal form slmserve does not serve), named so the refusal can say why.
GGUF_READ_NOT_BUILT = frozenset(
    {
        "bloom",
        "deci",
        "falcon",
        "gemma4",
        "gpt2",
        "mamba",
        "minimax-m2",
        "qwen2moe",
        "qwen3moe",
        "stablelm",
        "starcoder2",
        "t5",
        "t5encoder",
        "umt5",
    }
)


def gguf_refusal(architecture: str) -> str | None:
    """Why a GGUF of this architecture cannot be converted; None when it can."""
    if architecture in GGUF_ARCHITECTURES:
        return None
    convertible = ", ".join(sorted(GGUF_ARCHITECTURES))
    if architecture in GGUF_READ_NOT_BUILT:
        reason = "onnxruntime-genai's model builder does not build it"
    else:
        reason = "transformers' GGUF loader does not read it"
    return (
        f"cannot convert a GGUF of the {architecture!r} architecture: {reason}; "
        f"convertible GGUF architectures: {convertible}"
    )


def builder_refusal(architecture: str, model_type: str | None) -> str | None:
    """Why a Hugging Face model of this architecture cannot be built; None when it can."""
    if architecture in BUILDER_ARCHITECTURES:
        return None
    return (
        f"the ONNX model builder does not support the {architecture} architecture "
        f"(model_type {model_type!r}); it builds: {', '.join(sorted(BUILDER_ARCHITECTURES))}"
    )
