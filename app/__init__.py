"""slmserve: an OpenAI-compatible server for small language models (GGUF and ONNX GenAI)."""

__version__ = "0.1.0"
