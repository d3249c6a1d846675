"""`distill export`: GGUF and ONNX artifacts, checked against the source model and packaged per
device. The stage's `run` is in stage.py; its settings in config.py. llama.cpp's child processes
(`python -m distill.export.worker`) import this package too, so it imports nothing."""
