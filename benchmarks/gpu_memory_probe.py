"""Probe a real NVIDIA GPU: the total memory NVML reports vs what CUDA reports, and a CUDA context's cost.

vLLM sizes its budget from CUDA's total (``cudaMemGetInfo``) while NVML, nvidia-smi and our agent report NVML's;
the ratio is ``CUDA_VISIBLE_RATIO`` in ``gpustack_pulumi/placement/memory/vllm.py``. Prints JSON, one object per
GPU. Needs only the driver (libcuda, libnvidia-ml) and nvidia-ml-py.

    python benchmarks/gpu_memory_probe.py
"""

from __future__ import annotations

import ctypes
import json

import pynvml


def main() -> None:
    pynvml.nvmlInit()
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuInit(0) == 0
    count = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(count))
    results = []
    for index in range(count.value):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        before = pynvml.nvmlDeviceGetMemoryInfo(handle)
        device = ctypes.c_int()
        cuda.cuDeviceGet(ctypes.byref(device), index)
        total_cu = ctypes.c_size_t()
        cuda.cuDeviceTotalMem_v2(ctypes.byref(total_cu), device)
        context = ctypes.c_void_p()
        assert cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device) == 0
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
        after = pynvml.nvmlDeviceGetMemoryInfo(handle)
        results.append({
            "index": index,
            "name": pynvml.nvmlDeviceGetName(handle),
            "nvml_total": before.total,
            "nvml_used_before_context": before.used,
            "nvml_used_after_context": after.used,
            "cuda_device_total_mem": total_cu.value,
            "cuda_mem_get_info_total": total.value,
            "cuda_mem_get_info_free": free.value,
            "cuda_over_nvml": round(total.value / before.total, 6),
            "context_bytes": after.used - before.used,
        })
        cuda.cuCtxDestroy_v2(context)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
