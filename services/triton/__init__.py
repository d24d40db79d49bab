"""A real NVIDIA Triton Inference Server over the project's model repository: set-up
(scripts/setup_triton.sh), a launcher on local ports (server.py) and the `segxal_onnxruntime`
Python-based backend that serves model.onnx where the native ONNX Runtime backend is missing."""
