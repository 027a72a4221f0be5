"""`verger run | export | refit | sweep | forget | maintain | quantize`: the job on a local folder or
a bucket, the store's readers and its upkeep, and the int8 model."""
from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timedelta, timezone

from contract.layout import DEFAULT_VARIANCE_TARGET
from contract.manifest import MODES, build_manifest
from emr_job.blobs import local_path


def add_commands(subparsers) -> None:
    from emr_job.engines import DEFAULT_ENGINE, ENGINES
    from emr_job.upkeep import DEFAULT_ORPHAN_AGE, DEFAULT_RETENTION
    from emr_job.engines.precision import DEFAULT_PRECISION, PRECISIONS

    run = subparsers.add_parser(
        "run", help="process a <Label>/<image> folder as one batch",
        description="Extract features for the images of a <Label>/<image> folder not yet stored "
                    "(or all of them with --mode full), commit them, and apply or refit the PCA.",
    )
    run.add_argument("--images", required=True, help="folder laid out as <Label>/<image>")
    run.add_argument("--warehouse", required=True, help="warehouse directory (created if missing)")
    run.add_argument("--weights", help="imagenet, a local .h5 path or an s3:// URI (default: $VERGER_WEIGHTS)")
    run.add_argument("--limit", type=int, help="at most N images, spread across label folders")
    run.add_argument("--mode", choices=MODES, default="incremental",
                     help="full re-extracts everything listed and refits the PCA; sweep processes "
                          "what the store lacks")
    run.add_argument("--variance", type=float, default=DEFAULT_VARIANCE_TARGET,
                     help="explained-variance target that chooses k (default %(default)s)")
    run.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                     help="inference engine (default %(default)s; keras is the slow reference)")
    add_precision_arguments(run)
    run.set_defaults(command=command_run)

    export = subparsers.add_parser(
        "export", help="write the current store as one Parquet file",
        description="One row per image key (its latest version): image_key, label, etag, batch_id, "
                    "features (1280 float32) and, once a PCA exists, pca and pca_version.",
    )
    export.add_argument("--warehouse", required=True)
    export.add_argument("--out", required=True, help="the .parquet file to write")
    export.set_defaults(command=command_export)

    refit = subparsers.add_parser(
        "refit", help="refit the PCA over the stored features",
        description="Fit a new PCA version over every current feature row (no re-extraction), "
                    "rewrite the projections and switch to it in one commit.",
    )
    refit.add_argument("--warehouse", required=True)
    refit.add_argument("--variance", type=float, default=DEFAULT_VARIANCE_TARGET)
    refit.set_defaults(command=command_refit)

    sweep = subparsers.add_parser(
        "sweep", help="store every photo of a source that the store lacks (lost notifications)",
        description="The job lists the source (s3://BUCKET: raw/ and inbox/; file:///dir or a "
                    "folder: all of it) one prefix per task, compares (key, etag) with the store "
                    "in Spark, processes what is missing and erases stored photos the source no "
                    "longer holds.",
    )
    sweep.add_argument("--source", required=True, help="s3://BUCKET, file:///dir or a local folder")
    sweep.add_argument("--warehouse", required=True)
    sweep.add_argument("--weights", help="imagenet, a local .h5 path or an s3:// URI (default: $VERGER_WEIGHTS)")
    sweep.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    add_precision_arguments(sweep)
    sweep.set_defaults(command=command_sweep)

    quantize = subparsers.add_parser(
        "quantize", help="make the int8 model that --precision int8 runs, from calibration photos",
        description="Quantizes the converted graph of the weights to int8 (NNCF post-training: "
                    "performance preset, full bias correction, pooling kept fp32) on --photos photos "
                    "of the folder, spread over labels (plain series only where names carry one). "
                    "Writes OUT/int8-<id>/: model.xml, model.bin and calibration.json (the weights, "
                    "the photos' sha256, the settings). The id is part of the features' version.",
    )
    quantize.add_argument("--images", required=True, help="folder laid out as <Label>/<image>")
    quantize.add_argument("--weights", help="local .h5 weights (default: $VERGER_WEIGHTS)")
    quantize.add_argument("--out", required=True, help="folder to write int8-<id>/ into")
    quantize.add_argument("--photos", type=int, default=300, help="calibration photos (default %(default)s)")
    quantize.set_defaults(command=command_quantize)

    forget = subparsers.add_parser(
        "forget", help="erase photos from every table and their suggestion JSON (right to erasure)",
        description="Deletes every row of the keys from features, projections, quarantine and "
                    "suggestions, deletes their suggestion JSON, and recomputes the suggestions "
                    "that cited them. The bytes leave storage when `verger maintain` expires the "
                    "older snapshots (after --retention-days). Delete the photo from the bucket "
                    "too, or a sweep will store it again.",
    )
    forget.add_argument("--warehouse", required=True)
    forget.add_argument("--source", help="where the photos live (s3://BUCKET puts suggestion JSON in the bucket)")
    forget.add_argument("keys", nargs="+", metavar="KEY", help="image key, e.g. raw/Kiwi/1.jpg")
    forget.set_defaults(command=command_forget)

    maintain = subparsers.add_parser(
        "maintain", help="compact small files, expire old snapshots, delete unreferenced files",
        description="Per table: rewrite small files into few sorted by key, expire snapshots older "
                    "than the retention, then delete data files no snapshot references that are "
                    "older than the safety window (a younger one may be a commit in flight).",
    )
    maintain.add_argument("--warehouse", required=True)
    maintain.add_argument("--retention-days", type=float, default=DEFAULT_RETENTION.days,
                          help="keep snapshots this long (default %(default)s): the erasure delay")
    maintain.add_argument("--orphan-hours", type=float, default=DEFAULT_ORPHAN_AGE.total_seconds() / 3600,
                          help="only delete unreferenced files older than this (default %(default)s)")
    maintain.set_defaults(command=command_maintain)

    bench_store = subparsers.add_parser(
        "bench-store", help="100 new photos into a store grown to --rows rows against a small store",
        description="Side by side in one run: the job's seconds, the driver's peak memory, what the "
                    "batch's scans plan to read, and files/snapshots per table before and after maintain.",
    )
    bench_store.add_argument("--images", required=True, help="folder laid out as <Label>/<image>")
    bench_store.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows in the big store")
    bench_store.add_argument("--workdir", required=True, help="scratch folder (needs ~5.2 GB per million rows)")
    bench_store.add_argument("--weights", help="local .h5 weights (default: $VERGER_WEIGHTS)")
    bench_store.set_defaults(command=command_bench_store)

    bench = subparsers.add_parser(
        "bench", help="the notebook baseline and Verger's job on the same images, side by side",
        description="On the same images and weights: the classic notebook job, a single-process "
                    "reference (decode + Verger's engine, no Spark), and Verger's job on the whole "
                    "folder, on a 2,000-photo first batch and on 100 held-back photos into the "
                    "whole-folder store (JVM start excluded). Prints images/s, fixed and per-photo "
                    "cost, peak memory, the precision's effect on held-out accuracy and PCA k, and "
                    "the issue's targets; the last line is the whole-folder ratio to the baseline.",
    )
    bench.add_argument("--images", required=True, help="folder laid out as <Label>/<image>")
    bench.add_argument("--limit", type=int, help="at most N images, spread across label folders (default: all)")
    bench.add_argument("--weights", help="local .h5 weights (default: $VERGER_WEIGHTS)")
    bench.add_argument("--baseline", default=os.environ.get("VERGER_BASELINE", "../shared/bench/baseline_notebook.py"),
                       help="the notebook baseline script (default: $VERGER_BASELINE or %(default)s)")
    bench.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    bench.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                       help="Verger's precision; a lower one is judged against the baseline's FP32 features "
                            "(int8 quantizes on the folder's plain series first)")
    bench.set_defaults(command=command_bench)


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    from emr_job.engines.precision import DEFAULT_PRECISION, PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="fp32 (default, the exact feature contract), bf16 (openvino, CPUs with AVX-512 BF16 "
                             "or AMX), int8 (openvino, with --int8-model) or auto (bf16 exactly where the CPU "
                             "has AMX). A store holds one: switching needs --mode full")
    parser.add_argument("--int8-model", help="for --precision int8: the folder `verger quantize` wrote")


def command_run(args: argparse.Namespace) -> int:
    from emr_job import blobs
    from emr_job.folders import manifest_for_folder
    from emr_job.job import JobSettings, run_manifest
    from emr_job.session import get_session
    from emr_job.store import warehouse_root
    from contract.layout import manifest_key, warehouse_path
    from emr_job.weights import resolve_int8_model, resolve_weights

    weights = resolve_weights(args.weights)
    precision = settled_precision(args.engine, args.precision)
    int8_model = resolve_int8_model(args.int8_model, precision, weights)
    manifest = manifest_for_folder(args.images, args.mode, args.limit)
    blobs.write_bytes(warehouse_path(warehouse_root(args.warehouse), manifest_key(manifest.batch_id)),
                      manifest.to_json().encode())
    settings = JobSettings(warehouse=args.warehouse, weights_path=weights, variance=args.variance,
                           engine=args.engine, precision=precision, int8_model=int8_model)
    report = run_manifest(get_session("verger-run"), manifest, settings)
    print(json.dumps(report, indent=1))
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    from emr_job.folders import manifest_for_folder
    from emr_job.job import JobSettings, run_manifest
    from emr_job.session import get_session
    from emr_job.weights import resolve_int8_model, resolve_weights

    if args.source.startswith("s3://"):
        manifest = build_manifest("sweep", args.source, [], nonce=datetime.now(timezone.utc).isoformat())
    else:
        manifest = manifest_for_folder(local_path(args.source), "sweep")
    weights = resolve_weights(args.weights)
    precision = settled_precision(args.engine, args.precision)
    settings = JobSettings(warehouse=args.warehouse, weights_path=weights, engine=args.engine, precision=precision,
                           int8_model=resolve_int8_model(args.int8_model, precision, weights))
    print(json.dumps(run_manifest(get_session("verger-sweep"), manifest, settings), indent=1))
    return 0


def command_forget(args: argparse.Namespace) -> int:
    from emr_job.erasure import erase
    from emr_job.session import get_session
    from emr_job.store import open_catalog

    batch_id = f"forget-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    outcome = erase(get_session("verger-forget"), open_catalog(args.warehouse), args.warehouse, args.source,
                    batch_id, sorted(set(args.keys)))
    print(json.dumps(outcome, indent=1))
    return 0


def command_maintain(args: argparse.Namespace) -> int:
    from emr_job.store import open_catalog
    from emr_job.upkeep import Upkeep, maintain

    upkeep = Upkeep(retention=timedelta(days=args.retention_days), orphan_age=timedelta(hours=args.orphan_hours))
    print(json.dumps(maintain(open_catalog(args.warehouse), args.warehouse, upkeep), indent=1))
    return 0


def command_bench_store(args: argparse.Namespace) -> int:
    from emr_job.weights import resolve_weights
    from verger.store_bench import bench_store

    for line in bench_store(args.images, resolve_weights(args.weights), args.rows, args.workdir):
        print(line, flush=True)
    return 0


def settled_precision(engine: str, requested: str) -> str:
    """fp32, bf16 or int8 for this batch, checked against the engine; the choice goes to stderr."""
    import sys

    from emr_job.engines import check_precision
    from emr_job.engines.precision import choose_here

    choice = choose_here(requested)
    check_precision(engine, choice.precision)
    print(f"verger: precision {choice.precision} ({choice.reason})", file=sys.stderr)
    return choice.precision


def command_quantize(args: argparse.Namespace) -> int:
    from emr_job.weights import resolve_weights
    from verger.quantize import quantize

    model = quantize(args.images, resolve_weights(args.weights), args.out, args.photos)
    print(f"int8 model {model.model_id}: {model.folder} (run it with --precision int8 --int8-model {model.folder})")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from emr_job.readers import export
    from emr_job.session import get_session

    rows = export(get_session("verger-export"), args.warehouse, args.out)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    from verger.bench import bench
    from emr_job.weights import resolve_weights

    if not os.path.isfile(args.baseline):
        raise FileNotFoundError(f"baseline script not found: {args.baseline} (pass --baseline)")
    lines = bench(args.images, resolve_weights(args.weights), args.baseline, args.limit, args.engine, args.precision)
    for line in lines:
        print(line, flush=True)
    return 0


def command_refit(args: argparse.Namespace) -> int:
    from emr_job.job import JobSettings
    from emr_job.projections import refit
    from emr_job.session import get_session
    from emr_job.store import open_catalog

    settings = JobSettings(warehouse=args.warehouse, weights_path="", variance=args.variance)
    outcome = refit(get_session("verger-refit"), open_catalog(args.warehouse), settings)
    print(json.dumps(outcome, indent=1))
    return 0
