"""On-device benchmark runner for tensoredge exports (ONNX, GGUF).

Runs on Raspberry Pi-class boards with only onnxruntime, numpy, psutil and,
optionally, llama-cpp-python installed: never import torch or transformers here.
"""

__version__ = "0.1.0"
