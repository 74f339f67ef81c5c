"""ONNX export (custom-node and portable graphs), graph checks and TensorRT engine building (DESIGN §1, §3)."""
