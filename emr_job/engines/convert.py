"""Convert the weights to the cached ONNX model ahead of time: the custom image's build step.

    python -m emr_job.engines.convert WEIGHTS [--cache-dir DIR]

WEIGHTS is a Keras `.h5` file or a folder of them; an empty folder converts nothing (executors then
convert on their first task, as on a cluster). The model lands where `load_extractor` looks for it,
keyed by the weights' sha256 and the converter's versions, so a job given the same weights never
imports TensorFlow, and a job given other weights converts them as usual.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emr_job.engines import WeightsError, default_cache_dir, weights_sha256
from emr_job.engines.onnx_runtime import onnx_model_path
from emr_job.engines.weights_file import validate_weights


def convert(weights_path: str, cache_dir: str) -> str:
    """The cached ONNX model of these weights, converted now unless it is already there."""
    validate_weights(weights_path)
    return onnx_model_path(weights_path, weights_sha256(weights_path), cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emr_job.engines.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="a MobileNetV2 no-top .h5 file, or a folder of them")
    parser.add_argument("--cache-dir", help="where models are cached (default: $VERGER_CACHE_DIR or ~/.cache/verger)")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if not args.weights.exists():
        print(f"error: {args.weights} does not exist", file=sys.stderr)
        return 1
    paths = sorted(args.weights.glob("*.h5")) if args.weights.is_dir() else [args.weights]
    if not paths:
        print(f"no .h5 weights in {args.weights}: nothing converted (executors will convert on first use)")
        return 0
    for path in paths:
        try:
            model = convert(str(path), cache_dir)
        except WeightsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{path} -> {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
