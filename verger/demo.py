"""`verger demo`: the whole event-driven flow on one machine, with no AWS account.

Photos are uploaded to an embedded S3 API; its notifications reach SQS; the real Lambda handler is
invoked with SQS batches; its local launcher runs the real Spark job with `spark-submit`. Then a
second wave of new photos, a duplicate delivery of the first wave, and the full recompute; last, a
report (HTML + PNGs) in the warehouse.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from contract.layout import RAW_PREFIX
from verger import embedded

DEFAULT_BUCKET = "verger-demo-photos"
FULL_RECOMPUTE_EVENT = Path(__file__).resolve().parents[1] / "events" / "full-recompute.json"
UPLOAD_THREADS = 8
DEFAULT_LIMIT = 500
FRUITS_ENV = "VERGER_FRUITS"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which phase failed and why."""


@dataclass(frozen=True)
class DemoOptions:
    images: Path
    warehouse: Path
    weights: str
    limit: int | None = None
    second_wave_share: float = 0.2
    bucket: str = DEFAULT_BUCKET
    batching_window_s: int | None = None  # None: the template's default


@dataclass
class Phase:
    """One step of the demo: which batches it started and how long it took end to end."""

    name: str
    images_uploaded: int = 0
    records: int = 0
    invocations: int = 0
    batch_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    feature_rows: int = 0  # in the store after the phase
    feature_keys: int = 0


@dataclass(frozen=True)
class DemoResult:
    phases: list[Phase]
    report: Path
    endpoint: str  # of the embedded server, stopped by now


def plan_waves(images: Path, limit: int | None, second_wave_share: float) -> tuple[list[str], list[str]]:
    """The sample (`--limit`, spread over labels) split into a first wave and held-back new images.

    Every n-th image of each label (n = 1 / share) is held back, so both waves cover every label.
    """
    from emr_job.folders import list_image_keys, sample

    if not 0 < second_wave_share < 1:
        raise ValueError(f"second-wave share must be in (0, 1), got {second_wave_share}")
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    keys = sample(list_image_keys(str(images)), limit)
    if not keys:
        raise ValueError(f"no images under {images}: expected <Label>/<image>.jpg")
    every = max(2, round(1 / second_wave_share))
    by_label: dict[str, list[str]] = {}
    for key in keys:
        by_label.setdefault(os.path.dirname(key), []).append(key)
    first = [key for group in by_label.values() for i, key in enumerate(group) if (i + 1) % every]
    second = [key for group in by_label.values() for i, key in enumerate(group) if not (i + 1) % every]
    return first, second


def upload(s3: Any, bucket: str, images: Path, keys: list[str], description: str) -> None:
    """PUT each image under raw/<Label>/…, several at once, with a progress bar."""
    from tqdm import tqdm

    def put(key: str) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        s3.put_object(Bucket=bucket, Key=f"{RAW_PREFIX}{key}", Body=(images / key).read_bytes(),
                      ContentType=content_type)

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool, tqdm(total=len(keys), desc=description, unit="img") as bar:
        for _ in pool.map(put, keys):
            bar.update()


def manifest_ids(s3: Any, bucket: str) -> set[str]:
    """Batch ids of the manifests (attempt records live in a sub-folder and are not batches)."""
    from functions.recovery import manifests

    return {batch_id for batch_id, _ in manifests(s3, bucket)}


@contextmanager
def spark_conf_dir(ui_port: int) -> Iterator[dict[str, str]]:
    """A SPARK_CONF_DIR for the launcher's spark-submit: a known UI port, local mode's driver memory."""
    with tempfile.TemporaryDirectory(prefix="verger-spark-conf-") as directory:
        Path(directory, "spark-defaults.conf").write_text(
            f"spark.ui.port {ui_port}\nspark.driver.memory 4g\n", encoding="utf-8"
        )
        yield {"SPARK_CONF_DIR": directory}


def local_function_environment(stack: embedded.Stack, options: DemoOptions) -> dict[str, str]:
    """The function's environment from the template, with the local launcher and paths swapped in.

    spark-submit and its Python workers must run this interpreter (it has the job's packages),
    and inherit the endpoint and dummy credentials from this process's environment.
    """
    spark_submit = Path(sys.executable).with_name("spark-submit")
    if not spark_submit.exists():
        raise DemoError(f"spark-submit not found next to {sys.executable}: install the job extra (pyspark)")
    return {
        **stack.function_environment,
        "VERGER_LAUNCHER": "local",
        "VERGER_SPARK_SUBMIT": str(spark_submit),
        "VERGER_JOB_ENTRYPOINT": str(find_spec("emr_job.step").origin),
        "VERGER_WAREHOUSE_URI": str(options.warehouse),
        "VERGER_WEIGHTS_URI": options.weights,
        "PYSPARK_PYTHON": sys.executable,
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon on this machine
    }


@dataclass
class EmbeddedRun:
    """The stack, the handler and the clients of one demo run; each method is one phase."""

    stack: embedded.Stack
    handler: Callable[[dict[str, Any], Any], dict[str, Any]]
    s3: Any
    sqs: Any
    options: DemoOptions

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.handler(event, embedded.LambdaContext(self.stack.function_name, self.stack.timeout_s))

    def deliver(self, name: str, keys: list[str], bodies: list[str] | None = None) -> tuple[Phase, list[str]]:
        """Upload `keys` (or send `bodies` again), then drain the queue through the handler.

        Returns the phase and the message bodies it handled, for a later duplicate delivery.
        """
        from verger.report import feature_counts

        started = time.perf_counter()
        before = manifest_ids(self.s3, self.stack.bucket)
        if keys:
            upload(self.s3, self.stack.bucket, self.options.images, keys, name)
        if bodies:
            embedded.redeliver(self.sqs, self.stack.queue.queue_url, bodies)
        invocations = embedded.drain_queue(self.sqs, self.stack.queue, self.invoke)
        failed = sum(len(invocation.failed_message_ids) for invocation in invocations)
        if failed:
            raise DemoError(f"{name}: the handler failed {failed} records (its log above says why)")
        phase = Phase(
            name,
            images_uploaded=len(keys),
            records=sum(invocation.records for invocation in invocations),
            invocations=len(invocations),
            batch_ids=sorted(manifest_ids(self.s3, self.stack.bucket) - before),
            seconds=time.perf_counter() - started,
        )
        phase.feature_rows, phase.feature_keys = feature_counts(self.options.warehouse)
        return phase, [body for invocation in invocations for body in invocation.bodies]

    def full_recompute(self) -> Phase:
        """Invoke the handler with events/full-recompute.json, as `aws lambda invoke` would."""
        from verger.report import feature_counts

        started = time.perf_counter()
        submission = self.invoke(json.loads(FULL_RECOMPUTE_EVENT.read_text(encoding="utf-8")))
        phase = Phase("full recompute", records=1, invocations=1, batch_ids=[submission["batch_id"]],
                      seconds=time.perf_counter() - started)
        phase.feature_rows, phase.feature_keys = feature_counts(self.options.warehouse)
        return phase


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> DemoResult:
    """Run every phase against an embedded stack; the server and Spark stop even on errors."""
    import boto3

    from verger.report import write_report

    first_wave, second_wave = plan_waves(options.images, options.limit, options.second_wave_share)
    options.warehouse.mkdir(parents=True, exist_ok=True)
    parameters = {} if options.batching_window_s is None else {"BatchingWindowSeconds": str(options.batching_window_s)}
    ui_port = embedded.free_port()
    phases: list[Phase] = []
    with embedded.moto_server() as endpoint, spark_conf_dir(ui_port) as spark_env:
        say(f"embedded S3 + SQS API: {endpoint} (dummy credentials, region {embedded.REGION})")
        stack = embedded.create_stack(options.bucket, parameters)
        say(f"created from template.yaml: bucket {stack.bucket}, queue + DLQ, S3 -> SQS notifications; "
            f"event source batch size {stack.queue.batch_size}, window {stack.queue.batching_window_s:g} s")
        with embedded.patched_environ({**local_function_environment(stack, options), **spark_env}):
            run = EmbeddedRun(stack, embedded.load_handler(stack.handler), boto3.client("s3"),
                              boto3.client("sqs"), options)
            say(f"handler {stack.handler}; Spark UI while a step runs: http://localhost:{ui_port}")
            first, first_bodies = run.deliver("wave 1", first_wave)
            phases.append(first)
            say(describe(first))
            for name, keys, bodies in (("wave 2 (new images)", second_wave, None),
                                       ("wave 1 delivered again", [], first_bodies)):
                phases.append(run.deliver(name, keys, bodies)[0])
                say(describe(phases[-1]))
            phases.append(run.full_recompute())
            say(describe(phases[-1]))
    report = write_report(options.warehouse, phases)
    return DemoResult(phases, report, endpoint)


def describe(phase: Phase) -> str:
    return (f"{phase.name}: {phase.records} records in {phase.invocations} invocation(s), "
            f"batches {', '.join(phase.batch_ids) or 'none new'} ({phase.seconds:.1f} s); "
            f"store: {phase.feature_rows} feature rows, {phase.feature_keys} images")


def add_command(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole event-driven flow on one machine, with a report",
        description="Upload photos to an embedded S3 API (moto), let its notifications reach SQS, "
                    "invoke the real Lambda handler per SQS batch and run the real Spark job locally; "
                    "then new photos, a duplicate delivery and a full recompute; then a report.",
    )
    demo.add_argument("--images", default=os.environ.get(FRUITS_ENV),
                      help=f"folder laid out as <Label>/<image> (default: ${FRUITS_ENV})")
    demo.add_argument("--warehouse", default="warehouse-demo", help="warehouse directory (default %(default)s)")
    demo.add_argument("--weights", help="imagenet, or the no-top .h5 path (default: $VERGER_WEIGHTS)")
    # moto's ReceiveMessage slows down with every message in flight, so draining a large wave
    # through the embedded queue takes minutes; the default keeps the demo to a few minutes.
    demo.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                      help="at most N images, spread across label folders (default %(default)s)")
    demo.add_argument("--second-wave", type=float, default=0.2, dest="second_wave",
                      help="share of the sample held back for the second wave (default %(default)s)")
    demo.add_argument("--batching-window", type=int, dest="batching_window",
                      help="seconds; overrides the template's BatchingWindowSeconds")
    demo.set_defaults(command=command_demo)


def command_demo(args: argparse.Namespace) -> int:
    from emr_job.weights import resolve_weights

    if not args.images:
        raise ValueError(f"no images: pass --images DIR (laid out as <Label>/<image>) or set {FRUITS_ENV}")
    options = DemoOptions(
        images=Path(args.images).resolve(),
        warehouse=Path(args.warehouse).resolve(),
        weights=resolve_weights(args.weights),
        limit=args.limit,
        second_wave_share=args.second_wave,
        batching_window_s=args.batching_window,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_demo(options)
    except KeyboardInterrupt:
        print("verger demo: interrupted; the embedded server and Spark were stopped", file=sys.stderr)
        return 130
    except DemoError as error:
        print(f"verger demo: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary_table(result, options.warehouse))
    print(f"\nreport: {result.report}")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def summary_table(result: DemoResult, warehouse: Path) -> str:
    """One line per batch: what it processed, how fast, and what the PCA did."""
    from verger.report import batch_report

    header = ("phase", "batch", "mode", "in manifest", "new", "present", "quarantined", "img/s", "pca")
    rows = []
    for phase in result.phases:
        if not phase.batch_ids:
            rows.append((phase.name, f"(none new; {phase.records} records)", "", "", "", "", "", "", ""))
        for batch_id in phase.batch_ids:
            report = batch_report(warehouse, batch_id)
            images, pca = report["images"], report["pca"]
            rows.append((phase.name, batch_id, report["mode"], images["in_manifest"], images["new"],
                         images["already_present"], images["quarantined"], report["images_per_second"],
                         f"{pca['action']} k={pca.get('k', '-')}"))
    table = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in table]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])
