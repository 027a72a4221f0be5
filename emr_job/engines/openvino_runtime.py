"""The same converted ONNX graph run by OpenVINO, at fp32 (the contract) or bf16 (where native), or
its int8 quantization (`verger quantize`).

OpenVINO reads the ONNX file the ONNX engine caches, so both engines run one conversion of the
same Keras graph. On CPUs with AVX-512 its fp32 kernels run MobileNetV2 faster than ONNX
Runtime's; with AVX-512 BF16 or AMX, its bf16 inference hint runs faster again.
"""
from __future__ import annotations

import numpy as np

_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: its quantized layers are int8 already


def openvino_extractor(model_path: str, threads: int | None, precision: str):
    """Compile `model_path` for the CPU on at most `threads` cores; returns a numpy-in/out function.

    One stream and a latency hint: Spark already runs one worker per core, so each worker's
    requests go one at a time through its own threads; no pinning, since OpenVINO pins without
    knowing the other workers.
    """
    import openvino as ov

    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
        # Each process would pin its threads from core 0 up: two one-thread workers on one core.
        "ENABLE_CPU_PINNING": "NO",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        return request.infer({0: images}, share_outputs=False)[0]  # a copy: the buffer is reused

    return run
