"""The function's settings, read from the environment that `template.yaml` sets.

Reading them into one typed object up front turns a missing or malformed variable into an error
naming it, before any record is touched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract.layout import DEFAULT_PRECISION, DEFAULT_VARIANCE_TARGET, PRECISIONS

LAUNCHERS = ("emr", "emr-serverless", "local")
DEFAULT_LAUNCHER = "emr"
DEFAULT_MAX_IMAGES_PER_MANIFEST = 5000
DEFAULT_SPARK_SUBMIT = "spark-submit"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RECONCILE_GRACE_MINUTES = 120
DEFAULT_RETENTION_DAYS = 7


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclass(frozen=True)
class Settings:
    """Everything the trigger needs to know about where it runs.

    Attributes
    ----------
    bucket : str
        The bucket holding `raw/`, `inbox/` and `manifests/`.
    launcher : str
        One of `LAUNCHERS`.
    job_entrypoint : str
        The job's entry script (`s3://BUCKET/code/step.py` on AWS, a file path locally).
    warehouse_uri, weights_uri : str
        Passed through to the job as step arguments.
    variance_target : float
        The PCA's explained-variance target, passed to the job.
    precision : str
        One of `PRECISIONS`, passed to the job: fp32 is the feature contract; a store holds one
        precision, so changing it needs a full recompute.
    int8_model_uri : str, optional
        With precision int8 only (and required by it): the s3:// prefix of the model `verger
        quantize` made, staged with `python -m bootstrap.stage --int8-model DIR`.
    emr_cluster_id : str, optional
        An existing cluster to use; without it the stack's own cluster is found or created.
    max_attempts : int
        Runs of one batch (the first included) before the alert topic is told.
    reconcile_grace_minutes : int
        A manifest younger than this is left to its run, even without a report.
    retention_days : int
        Snapshots older than this are expired by the scheduled upkeep (the erasure time).
    """

    bucket: str
    launcher: str
    job_entrypoint: str
    warehouse_uri: str
    weights_uri: str
    variance_target: float = DEFAULT_VARIANCE_TARGET
    precision: str = DEFAULT_PRECISION
    int8_model_uri: str | None = None
    max_images_per_manifest: int = DEFAULT_MAX_IMAGES_PER_MANIFEST
    emr_cluster_id: str | None = None
    emr_application_id: str | None = None
    emr_job_role_arn: str | None = None
    spark_submit: str = DEFAULT_SPARK_SUBMIT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    reconcile_grace_minutes: int = DEFAULT_RECONCILE_GRACE_MINUTES
    alert_topic_arn: str | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build `Settings` from environment variables, naming the first one that is wrong.

    Empty values count as unset, since CloudFormation conditions often render an unused setting
    as an empty string.
    """
    launcher = _optional(environ, "VERGER_LAUNCHER") or DEFAULT_LAUNCHER
    if launcher not in LAUNCHERS:
        raise SettingsError(
            f"VERGER_LAUNCHER={launcher!r} is not supported: expected one of {', '.join(LAUNCHERS)}"
        )
    settings = Settings(
        bucket=_required(environ, "VERGER_BUCKET"),
        launcher=launcher,
        job_entrypoint=_required(environ, "VERGER_JOB_ENTRYPOINT"),
        warehouse_uri=_required(environ, "VERGER_WAREHOUSE_URI"),
        weights_uri=_required(environ, "VERGER_WEIGHTS_URI"),
        variance_target=_variance_target(environ),
        precision=_precision(environ),
        int8_model_uri=_int8_model_uri(environ),
        max_images_per_manifest=_max_images(environ),
        emr_cluster_id=_optional(environ, "VERGER_EMR_CLUSTER_ID"),
        emr_application_id=_optional(environ, "VERGER_EMR_APPLICATION_ID"),
        emr_job_role_arn=_optional(environ, "VERGER_EMR_JOB_ROLE_ARN"),
        spark_submit=_optional(environ, "VERGER_SPARK_SUBMIT") or DEFAULT_SPARK_SUBMIT,
        max_attempts=_positive_int(environ, "VERGER_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS),
        reconcile_grace_minutes=_positive_int(
            environ, "VERGER_RECONCILE_GRACE_MINUTES", DEFAULT_RECONCILE_GRACE_MINUTES
        ),
        alert_topic_arn=_optional(environ, "VERGER_ALERT_TOPIC_ARN"),
        retention_days=_positive_int(environ, "VERGER_RETENTION_DAYS", DEFAULT_RETENTION_DAYS),
    )
    _require_launcher_settings(settings)
    _require_int8_model_with_int8_only(settings)
    return settings


def _require_launcher_settings(settings: Settings) -> None:
    needed = {
        "emr": {},  # without VERGER_EMR_CLUSTER_ID the stack's own cluster is used
        "emr-serverless": {
            "VERGER_EMR_APPLICATION_ID": settings.emr_application_id,
            "VERGER_EMR_JOB_ROLE_ARN": settings.emr_job_role_arn,
        },
        "local": {},
    }[settings.launcher]
    for name, value in needed.items():
        if not value:
            raise SettingsError(f"{name} is required when VERGER_LAUNCHER={settings.launcher}")


def _require_int8_model_with_int8_only(settings: Settings) -> None:
    if settings.precision == "int8" and not settings.int8_model_uri:
        raise SettingsError(
            "VERGER_INT8_MODEL_URI is required when VERGER_PRECISION=int8: int8 runs the model "
            "`verger quantize` made, staged with `python -m bootstrap.stage --int8-model DIR`"
        )
    if settings.precision != "int8" and settings.int8_model_uri:
        raise SettingsError(
            f"VERGER_INT8_MODEL_URI is for VERGER_PRECISION=int8 only, not {settings.precision}: "
            "unset it or set the precision to int8"
        )


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _required(environ: Mapping[str, str], name: str) -> str:
    value = _optional(environ, name)
    if value is None:
        raise SettingsError(f"{name} is not set: the function cannot run without it")
    return value


def _variance_target(environ: Mapping[str, str]) -> float:
    text = _optional(environ, "VERGER_VARIANCE_TARGET")
    if text is None:
        return DEFAULT_VARIANCE_TARGET
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"VERGER_VARIANCE_TARGET={text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise SettingsError(f"VERGER_VARIANCE_TARGET={text!r} must be in (0, 1]")
    return value


def _precision(environ: Mapping[str, str]) -> str:
    precision = _optional(environ, "VERGER_PRECISION") or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise SettingsError(
            f"VERGER_PRECISION={precision!r} is not supported: expected one of {', '.join(PRECISIONS)}"
        )
    return precision


def _int8_model_uri(environ: Mapping[str, str]) -> str | None:
    uri = _optional(environ, "VERGER_INT8_MODEL_URI")
    if uri is not None and not uri.startswith("s3://"):
        raise SettingsError(f"VERGER_INT8_MODEL_URI={uri!r} must be an s3:// prefix (s3://BUCKET/models/int8-ID)")
    return uri


def _max_images(environ: Mapping[str, str]) -> int:
    return _positive_int(environ, "VERGER_MAX_IMAGES_PER_MANIFEST", DEFAULT_MAX_IMAGES_PER_MANIFEST)


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = _optional(environ, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not an integer") from None
    if value < 1:
        raise SettingsError(f"{name}={text!r} must be at least 1")
    return value
