"""`verger demo`: the whole event-driven flow on one machine, with no AWS account.

Photos are uploaded to an embedded S3 API while its notifications reach SQS and the real Lambda
handler is invoked with SQS batches; its local launcher runs the real Spark job with
`spark-submit`. Phases: a first wave, a second wave of new photos, a duplicate delivery, photos
in the inbox getting suggestions, photos deleted from the bucket, the full recompute; then `verger run` on the same photos for
reference, and a report (HTML + PNGs) in the warehouse.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TextIO

from contract.layout import RAW_PREFIX
from verger import embedded
from verger.bench import link_images
from verger.demo.console import LOGS_DIR, SPARK_LOG4J, Console, quiet_logs
from verger.demo.plan import Plan, PlanError, plan_phases, round_robin

DEFAULT_BUCKET = "verger-demo-photos"
FULL_RECOMPUTE_EVENT = Path(__file__).resolve().parents[2] / "events" / "full-recompute.json"
UPLOAD_THREADS = 8
FRUITS_ENV = "VERGER_FRUITS"
REFERENCE_DIR = "reference-run"
DEMO_MARKER = ".verger-demo"
# The event flow may take this much longer than `verger run` on the same photos (issue 13).
TARGET_RATIO = 1.3
# One machine runs its steps one after another, each paying JVM start and model load: one step
# per invocation (Lambda's 6 MB payload holds ~8,300 notifications) rather than the cluster's
# 5,000-image manifests, which keep a step short and its retry cheap when steps run side by side.
LOCAL_STACK_PARAMETERS = {"MaxImagesPerManifest": "10000"}


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
    reference_run: bool = True  # time `verger run` on the same photos
    verbose: bool = False


@dataclass
class Phase:
    """One step of the demo: what it is for, which batches it started, how long it took."""

    name: str
    purpose: str
    images_uploaded: int = 0
    records: int = 0
    invocations: int = 0
    batch_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)  # batch id -> its invocation's wall
    feature_rows: int = 0  # in the store after the phase
    feature_keys: int = 0


@dataclass(frozen=True)
class Reference:
    """`verger run` on the same photos, for comparison with the event flow."""

    images: int
    seconds: float
    event_flow_seconds: float

    @property
    def ratio(self) -> float:
        return self.event_flow_seconds / self.seconds


@dataclass(frozen=True)
class DemoResult:
    plan: Plan
    phases: list[Phase]
    report: Path
    endpoint: str  # of the embedded server, stopped by now
    reference: Reference | None
    logs: Path | None


WAVE_1 = "wave 1"
WAVE_2 = "wave 2"
DUPLICATE = "duplicate delivery"
INBOX = "inbox"
DELETE = "deletes"
RECOMPUTE = "full recompute"
PURPOSES = {
    WAVE_1: "first photos of every label: the first batches and the first PCA",
    WAVE_2: "new photos of every label: only they are extracted, the stored PCA applied, drift measured",
    DUPLICATE: "the last SQS batch of wave 1 delivered again: nothing is redone",
    INBOX: "unlabelled photos under inbox/: each gets label suggestions",
    DELETE: "photos deleted from the bucket: gone from every table, suggestions citing them redone",
    RECOMPUTE: "the full-recompute event: everything re-extracted, a new PCA version",
}
EVENT_FLOW_PHASES = (WAVE_1, WAVE_2)  # they carry every labelled photo of the sample


def fresh_warehouse(warehouse: Path) -> None:
    """An empty warehouse for the phases to mean what they say; a previous demo's is replaced,
    anything else is refused."""
    marker = warehouse / DEMO_MARKER
    if warehouse.exists() and any(warehouse.iterdir()):
        if not marker.exists():
            raise DemoError(f"{warehouse} is not empty and was not made by `verger demo`: pass another --warehouse")
        shutil.rmtree(warehouse)
    warehouse.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by verger demo; the next demo run replaces this folder\n", encoding="utf-8")


def plan_for(options: DemoOptions) -> Plan:
    from emr_job.folders import list_image_keys, sample

    if not options.images.is_dir():
        raise FileNotFoundError(f"images folder not found: {options.images}")
    keys = sample(list_image_keys(str(options.images)), options.limit)
    if not keys:
        raise ValueError(f"no images under {options.images}: expected <Label>/<image>.jpg")
    return plan_phases(keys, options.second_wave_share)


def upload_all(s3: Any, bucket: str, uploads: list[tuple[Path, str]], stop: threading.Event) -> None:
    """PUT (local file, key) pairs from a few threads; those not started when `stop` is set are skipped."""

    def put(upload: tuple[Path, str]) -> None:
        if stop.is_set():
            return
        path, key = upload
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(),
                      ContentType=mimetypes.guess_type(key)[0] or "application/octet-stream")

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for future in [pool.submit(put, upload) for upload in uploads]:
            future.result()


def manifest_ids(s3: Any, bucket: str) -> set[str]:
    """Batch ids of the manifests (attempt records live in a sub-folder and are not batches)."""
    from functions.recovery import manifests

    return {batch_id for batch_id, _ in manifests(s3, bucket)}


@contextmanager
def spark_conf_dir(ui_port: int) -> Iterator[dict[str, str]]:
    """A SPARK_CONF_DIR for the launcher's spark-submit: a known UI port, local mode's driver
    memory, no console progress bar, and log4j writing to standard output (see console.py)."""
    with tempfile.TemporaryDirectory(prefix="verger-spark-conf-") as directory:
        Path(directory, "spark-defaults.conf").write_text(
            f"spark.ui.port {ui_port}\nspark.driver.memory 4g\nspark.ui.showConsoleProgress false\n",
            encoding="utf-8",
        )
        Path(directory, "log4j2.properties").write_text(SPARK_LOG4J, encoding="utf-8")
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


def progress(screen: TextIO, name: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{name:<18}", unit="img", file=screen, dynamic_ncols=True,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} img [{elapsed}] {postfix}")


@dataclass
class EmbeddedRun:
    """The stack, the handler and the clients of one demo run; each method is one phase."""

    stack: embedded.Stack
    handler: Callable[[dict[str, Any], Any], dict[str, Any]]
    s3: Any
    sqs: Any
    options: DemoOptions
    screen: TextIO

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.handler(event, embedded.LambdaContext(self.stack.function_name, self.stack.timeout_s))

    def deliver(self, name: str, uploads: list[tuple[Path, str]], bodies: list[str] | None = None,
                deletions: list[str] | None = None) -> tuple[Phase, list[embedded.Invocation]]:
        """Upload photos (or send `bodies` again, or delete keys) while the queue is drained
        through the handler.

        The bar counts images whose notifications the handler has taken (locally: whose Spark
        step has finished), as the event source would see them go.
        """
        started = time.perf_counter()
        before = manifest_ids(self.s3, self.stack.bucket)
        known, steps, invocations = set(before), {}, 0
        in_order: list[str] = []  # the phase's batches in the order their steps ran
        total = len(uploads) or len(bodies or ()) or len(deletions or ())
        stop = threading.Event()  # set when the phase fails or is interrupted: pending uploads are skipped
        with progress(self.screen, name, total) as bar, ThreadPoolExecutor(1) as background:
            sending: Future = background.submit(self._send, uploads, bodies or [], deletions or [], stop)

            def taken(invocation: embedded.Invocation) -> None:
                nonlocal known, invocations
                invocations += 1
                started_now = manifest_ids(self.s3, self.stack.bucket) - known
                known |= started_now
                in_order.extend(sorted(started_now))
                if len(started_now) == 1:  # its wall time is that batch's step, start-up included
                    steps[started_now.pop()] = invocation.seconds
                bar.update(min(invocation.records, total - bar.n))
                bar.set_postfix_str(f"{invocations} handler invocation(s), {len(known - before)} Spark step(s)")

            def invoke(event: dict[str, Any]) -> dict[str, Any]:
                try:
                    return self.invoke(event)
                except BaseException:  # the poller then stops waiting for uploads, which stop too
                    stop.set()
                    raise

            try:
                handled = embedded.drain_queue(self.sqs, self.stack.queue, invoke, on_invocation=taken,
                                               more_coming=lambda: not (sending.done() or stop.is_set()))
            except BaseException:
                stop.set()
                raise
            sending.result()  # an upload error surfaces here
            bar.update(total - bar.n)
        failed = sum(len(invocation.failed_message_ids) for invocation in handled)
        if failed:
            raise DemoError(f"{name}: the handler failed {failed} records (see its log)")
        phase = Phase(name, PURPOSES[name], images_uploaded=len(uploads),
                      records=sum(invocation.records for invocation in handled), invocations=len(handled),
                      batch_ids=in_order, seconds=time.perf_counter() - started,
                      step_seconds=steps)
        self._count(phase)
        return phase, handled

    def _send(self, uploads: list[tuple[Path, str]], bodies: list[str], deletions: list[str],
              stop: threading.Event) -> None:
        if uploads:
            upload_all(self.s3, self.stack.bucket, uploads, stop)
        if bodies:
            embedded.redeliver(self.sqs, self.stack.queue.queue_url, bodies)
        for key in deletions:
            self.s3.delete_object(Bucket=self.stack.bucket, Key=key)

    def full_recompute(self, photos: int) -> Phase:
        """Invoke the handler with events/full-recompute.json, as `aws lambda invoke` would."""
        from verger.report import batch_report

        started = time.perf_counter()
        with progress(self.screen, RECOMPUTE, photos) as bar:
            bar.set_postfix_str("one manifest of every photo, one Spark step")
            submission = self.invoke(json.loads(FULL_RECOMPUTE_EVENT.read_text(encoding="utf-8")))
            # its manifest names no photo (the job lists the bucket): the step's report counts them
            images = batch_report(self.options.warehouse, submission["batch_id"])["images"]
            bar.update(images["new"] + images["quarantined"])
        seconds = time.perf_counter() - started
        phase = Phase(RECOMPUTE, PURPOSES[RECOMPUTE], records=1, invocations=1,
                      batch_ids=[submission["batch_id"]], seconds=seconds,
                      step_seconds={submission["batch_id"]: seconds})
        self._count(phase)
        return phase

    def _count(self, phase: Phase) -> None:
        from verger.report import feature_counts

        phase.feature_rows, phase.feature_keys = feature_counts(self.options.warehouse)


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    """Run every phase against an embedded stack; the server and Spark stop even on errors."""
    import boto3

    from verger.report import write_report

    console = console or Console(sys.stderr, None)
    say = lambda line: print(line, file=console.screen, flush=True)  # noqa: E731
    plan = plan_for(options)
    options.warehouse.mkdir(parents=True, exist_ok=True)
    parameters = dict(LOCAL_STACK_PARAMETERS)
    if options.batching_window_s is not None:
        parameters["BatchingWindowSeconds"] = str(options.batching_window_s)
    ui_port = embedded.free_port()
    phases: list[Phase] = []
    raw = lambda keys: [(options.images / key, f"{RAW_PREFIX}{key}") for key in keys]  # noqa: E731
    with embedded.moto_server() as endpoint, spark_conf_dir(ui_port) as spark_env:
        stack = embedded.create_stack(options.bucket, parameters)
        say(f"embedded S3 + SQS API: {endpoint}; bucket, queue + DLQ and notifications from template.yaml "
            f"(batch size {stack.queue.batch_size}, window {stack.queue.batching_window_s:g} s)")
        say(f"{len(plan.all_keys)} photos of {len({os.path.dirname(k) for k in plan.all_keys})} labels; "
            f"Spark UI while a step runs: http://localhost:{ui_port}")
        with embedded.patched_environ({**local_function_environment(stack, options), **spark_env}):
            run = EmbeddedRun(stack, embedded.load_handler(stack.handler), boto3.client("s3"),
                              boto3.client("sqs"), options, console.screen)
            first, first_invocations = run.deliver(WAVE_1, raw(round_robin(plan.first_wave)))
            phases.append(first)
            phases.append(run.deliver(WAVE_2, raw(plan.second_wave))[0])
            phases.append(run.deliver(DUPLICATE, [], list(first_invocations[-1].bodies))[0])
            inbox = [(options.images / source, key) for key, source in plan.inbox.items()]
            phases.append(run.deliver(INBOX, inbox)[0])
            if plan.deleted:
                phases.append(run.deliver(DELETE, [], deletions=[key for _, key in raw(plan.deleted)])[0])
            else:
                say("deletes: skipped (no label has two first-wave photos to spare; raise --limit)")
            phases.append(run.full_recompute(len(plan.all_keys) - len(plan.deleted)))
    reference = time_reference_run(options, plan, phases, console) if options.reference_run else None
    report = write_report(options.warehouse, phases, options.images, plan.inbox, reference)
    return DemoResult(plan, phases, report, endpoint, reference, console.logs)


def time_reference_run(options: DemoOptions, plan: Plan, phases: list[Phase], console: Console) -> Reference:
    """`verger run` on the two waves' photos (a folder of hard links to them), as a user would type it, timed.

    The inbox phase is left out of both sides: its step exists to show suggestions, not speed.
    """
    root = options.warehouse / REFERENCE_DIR
    photos = [*plan.first_wave, *plan.second_wave]
    link_images(str(options.images), photos, root / "photos")
    command = [sys.executable, "-m", "verger.cli", "run", "--images", str(root / "photos"),
               "--warehouse", str(root / "warehouse"), "--weights", options.weights]
    log = (console.logs / "reference-run.log") if console.logs else None
    with progress(console.screen, "verger run", len(photos)) as bar, \
            (log.open("w", encoding="utf-8") if log else open(os.devnull, "w")) as sink:
        bar.set_postfix_str("the waves' photos from a folder, no event flow (for comparison)")
        started = time.perf_counter()
        finished = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            raise DemoError(f"verger run (reference) exited with {finished.returncode}; see {log or 'its output'}")
        bar.update(len(photos))
    event_flow = sum(phase.seconds for phase in phases if phase.name in EVENT_FLOW_PHASES)
    return Reference(len(photos), seconds, event_flow)


def add_command(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole event-driven flow on one machine, with a report",
        description="Upload photos to an embedded S3 API (moto), let its notifications reach SQS, "
                    "invoke the real Lambda handler per SQS batch and run the real Spark job locally: "
                    "two waves, a duplicate delivery, inbox photos, deleted photos, a full recompute; "
                    "then `verger run` "
                    "on the same photos for comparison, and a report.",
    )
    demo.add_argument("--images", default=os.environ.get(FRUITS_ENV),
                      help=f"folder laid out as <Label>/<image> (default: ${FRUITS_ENV})")
    demo.add_argument("--warehouse", default="warehouse-demo", help="warehouse directory (default %(default)s)")
    demo.add_argument("--weights", help="imagenet, or the no-top .h5 path (default: $VERGER_WEIGHTS)")
    demo.add_argument("--limit", type=int,
                      help="at most N images, spread across label folders (default: all; at least 2 x labels)")
    demo.add_argument("--second-wave", type=float, default=0.2, dest="second_wave",
                      help="share of each label held back for the second wave (default %(default)s)")
    demo.add_argument("--batching-window", type=int, dest="batching_window",
                      help="seconds; overrides the template's BatchingWindowSeconds")
    demo.add_argument("--no-reference", action="store_false", dest="reference_run",
                      help="skip timing `verger run` on the same photos")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help=f"show the handler's and Spark's logs live instead of <warehouse>/{LOGS_DIR}/")
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
        reference_run=args.reference_run,
        verbose=args.verbose,
    )
    try:
        fresh_warehouse(options.warehouse)
    except DemoError as error:
        print(f"verger demo: {error}", file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with quiet_logs(options.warehouse / LOGS_DIR, options.verbose) as console:
            try:
                result = run_demo(options, console)
            except KeyboardInterrupt:
                print("verger demo: interrupted; the embedded server and Spark were stopped", file=console.screen)
                return 130
            except (DemoError, PlanError) as error:
                where = f" (logs: {console.logs})" if console.logs else ""
                print(f"verger demo: {error}{where}", file=console.screen)
                return 1
            print(summary(result, options.warehouse), file=console.screen)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def summary(result: DemoResult, warehouse: Path) -> str:
    """The closing note: one line per phase, the comparison with `verger run`, where things are."""
    from verger.report import batch_report

    header = ("phase", "seconds", "SQS records", "Spark steps", "new", "present", "quarantined", "erased", "pca",
              "store")
    rows = []
    for phase in result.phases:
        reports = [batch_report(warehouse, batch_id) for batch_id in phase.batch_ids]
        images = lambda name: sum(report["images"][name] for report in reports)  # noqa: E731
        pca = ", ".join(dict.fromkeys(f"{r['pca']['action']} k={r['pca'].get('k', '-')}" for r in reports)) or "-"
        erased = sum(report.get("erasure", {}).get("photos_erased", 0) for report in reports)
        rows.append((phase.name, f"{phase.seconds:.1f}", phase.records, len(phase.batch_ids), images("new"),
                     images("already_present"), images("quarantined"), erased, pca, f"{phase.feature_keys} images"))
    table = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in table]
    lines = [lines[0], "  ".join("-" * width for width in widths), *lines[1:], ""]
    if result.reference:
        ref = result.reference
        lines.append(f"event flow (waves 1 + 2): {ref.event_flow_seconds:.1f} s for {ref.images} photos; "
                     f"verger run on the same photos: {ref.seconds:.1f} s; ratio {ref.ratio:.2f} "
                     f"(target <= {TARGET_RATIO})")
    if result.logs:
        lines.append(f"logs: {result.logs}/")
    lines.append(f"report: {result.report}")
    return "\n".join(lines)
