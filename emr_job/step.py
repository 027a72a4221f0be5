"""The EMR step: `spark-submit step.py --manifest URI --warehouse URI --weights URI --variance V
--precision P [--int8-model URI]`.

The arguments (named in contract.layout.StepArgs) mean the same on EMR, EMR Serverless and locally.
"""
from __future__ import annotations

import argparse
import json
import sys

from contract.layout import DEFAULT_VARIANCE_TARGET, StepArgs
from contract.manifest import MAINTAIN_MODE


def parser() -> argparse.ArgumentParser:
    from emr_job.engines import DEFAULT_ENGINE, ENGINES
    from emr_job.engines.precision import DEFAULT_PRECISION, PRECISIONS

    parse = argparse.ArgumentParser(prog="step.py", description="Process one Verger manifest.")
    parse.add_argument(StepArgs.MANIFEST, required=True, help="s3:// or file:// URI of the manifest JSON")
    parse.add_argument(StepArgs.WAREHOUSE, required=True, help="warehouse URI (s3://… or a local directory)")
    parse.add_argument(StepArgs.WEIGHTS, default=None,
                       help="imagenet, a local .h5 path or an s3:// URI (default: $VERGER_WEIGHTS)")
    parse.add_argument(StepArgs.VARIANCE, type=float, default=DEFAULT_VARIANCE_TARGET,
                       help="explained-variance target that chooses k (default %(default)s)")
    parse.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="inference engine")
    parse.add_argument(StepArgs.PRECISION, choices=PRECISIONS, default=DEFAULT_PRECISION,
                       help="fp32 (the contract), bf16 (native bf16 CPUs only), int8 (with --int8-model) or auto")
    parse.add_argument(StepArgs.INT8_MODEL, default=None,
                       help="for --precision int8: the folder `verger quantize` made (local or s3://)")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from contract.manifest import ManifestError, parse_manifest
    from contract import layout
    from emr_job import blobs, store
    from emr_job.commits import check_feature_version
    from emr_job.engines import check_precision
    from emr_job.engines.precision import choose_here
    from emr_job.engines.weights_file import WeightsError
    from emr_job.job import JobSettings, run_manifest
    from emr_job.session import get_session
    from emr_job.weights import resolve_int8_model, resolve_weights

    try:
        manifest = parse_manifest(blobs.read_bytes(args.manifest))
    except (ManifestError, OSError, ValueError) as error:
        return refused(error)
    if manifest.mode == MAINTAIN_MODE:  # upkeep needs neither weights nor an engine
        return maintenance(manifest, args.warehouse)
    try:
        precision = choose_here(args.precision)
        check_precision(args.engine, precision.precision)
        weights = resolve_weights(args.weights)
        int8_model = resolve_int8_model(args.int8_model, precision.precision, weights)
        settings = JobSettings(warehouse=args.warehouse, weights_path=weights, variance=args.variance,
                               engine=args.engine, precision=precision.precision, int8_model=int8_model)
        features = store.load_table(store.open_catalog(args.warehouse), layout.FEATURES_TABLE)
        check_feature_version(features, settings.feature_version, manifest.mode)  # before Spark starts
    except (WeightsError, OSError, ValueError) as error:
        return refused(error)
    print(f"verger step: precision {precision.precision} ({precision.reason})", file=sys.stderr)
    report = run_manifest(get_session(f"verger-{manifest.batch_id}"), manifest, settings)
    print(json.dumps(report, indent=1))
    return 0


def refused(error: Exception) -> int:
    print(f"verger step: {error}", file=sys.stderr)
    return 2


def maintenance(manifest, warehouse: str) -> int:
    """A `maintain` manifest: table upkeep (emr_job.upkeep) with the manifest's retention."""
    from emr_job.session import get_session
    from emr_job.upkeep import run_maintenance

    # Upkeep is plain pyiceberg, but YARN fails a cluster-mode driver that never starts a
    # SparkContext ("User did not initialize spark context!"), so the step starts one as any does.
    get_session(f"verger-{manifest.batch_id}")
    print(json.dumps(run_maintenance(manifest, warehouse), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
