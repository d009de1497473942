"""Deployment: exports for runtimes outside PyTorch, compaction, latency and accuracy measurement.

- `optimum_support`: `sparse_bert` registered with Optimum's ONNX / OpenVINO exporters.
- `onnx`: `export_onnx` (ONNX Runtime fp32, dynamic or static INT8).
- `openvino`: `export_openvino` (OpenVINO fp32, NNCF INT8), `compile_model` (optionally for one static input shape),
  weight-layout and executed-kernel / executed-precision checks.
- `compact`: remove pruned attention heads and FFN neurons (`compact`, `compact_model`).
- `calibration`: calibration text from the real data.
- `bench`: latency across runtimes (`hf-sparse bench`); `accuracy`: GLUE dev scores of exports.

Everything that needs Optimum is imported lazily, so the package works without the `onnx` /
`openvino` extras (transformers 5 included) and fails with `ExportError` only when an export is asked for.
OpenVINO export also runs on transformers 5.0-5.5 with optimum-intel 2.x (`openvino-transformers5` extra).
"""
