"""The function's settings, read from the environment that `template.yaml` sets.

Reading them into one typed object up front turns a missing or malformed variable into an error
naming it, before any record is touched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract.layout import DEFAULT_VARIANCE_TARGET

LAUNCHERS = ("emr", "emr-serverless", "local")
DEFAULT_LAUNCHER = "emr"
DEFAULT_MAX_IMAGES_PER_MANIFEST = 5000
DEFAULT_SPARK_SUBMIT = "spark-submit"


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
    """

    bucket: str
    launcher: str
    job_entrypoint: str
    warehouse_uri: str
    weights_uri: str
    variance_target: float = DEFAULT_VARIANCE_TARGET
    max_images_per_manifest: int = DEFAULT_MAX_IMAGES_PER_MANIFEST
    emr_cluster_id: str | None = None
    emr_application_id: str | None = None
    emr_job_role_arn: str | None = None
    spark_submit: str = DEFAULT_SPARK_SUBMIT


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
        max_images_per_manifest=_max_images(environ),
        emr_cluster_id=_optional(environ, "VERGER_EMR_CLUSTER_ID"),
        emr_application_id=_optional(environ, "VERGER_EMR_APPLICATION_ID"),
        emr_job_role_arn=_optional(environ, "VERGER_EMR_JOB_ROLE_ARN"),
        spark_submit=_optional(environ, "VERGER_SPARK_SUBMIT") or DEFAULT_SPARK_SUBMIT,
    )
    _require_launcher_settings(settings)
    return settings


def _require_launcher_settings(settings: Settings) -> None:
    needed = {
        "emr": {"VERGER_EMR_CLUSTER_ID": settings.emr_cluster_id},
        "emr-serverless": {
            "VERGER_EMR_APPLICATION_ID": settings.emr_application_id,
            "VERGER_EMR_JOB_ROLE_ARN": settings.emr_job_role_arn,
        },
        "local": {},
    }[settings.launcher]
    for name, value in needed.items():
        if not value:
            raise SettingsError(f"{name} is required when VERGER_LAUNCHER={settings.launcher}")


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


def _max_images(environ: Mapping[str, str]) -> int:
    text = _optional(environ, "VERGER_MAX_IMAGES_PER_MANIFEST")
    if text is None:
        return DEFAULT_MAX_IMAGES_PER_MANIFEST
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"VERGER_MAX_IMAGES_PER_MANIFEST={text!r} is not an integer") from None
    if value < 1:
        raise SettingsError(f"VERGER_MAX_IMAGES_PER_MANIFEST={text!r} must be at least 1")
    return value
