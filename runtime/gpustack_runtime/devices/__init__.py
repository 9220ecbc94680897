"""Device backends: NVML (NVIDIA), Ascend (npu-smi) and none (CPU-only)."""
