"""Exporters: ONNX (factors kept) and GGUF (llama.cpp). Each checks itself before writing."""
