"""Inference runtimes. Only `faasd.runtime.onnx` imports onnxruntime."""
