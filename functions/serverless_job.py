"""The body of an EMR Serverless job run: what the EMR cluster gets from its configurations.

A cluster gets the job's Python and the pyiceberg catalog from the `spark-env` and `spark-defaults`
classifications of its definition (functions/cluster.py), and its sizes from the instance type. EMR Serverless has
neither: the Python 3.11 venv comes with the custom image (bootstrap/Dockerfile builds it at the
path the bootstrap action uses on cluster nodes), and every setting rides on each request.
tests/unit/functions/test_serverless_job.py compares these with the cluster's, so the two paths
cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass

from contract.layout import CATALOG_NAME

# The venv `bootstrap/emr_bootstrap.sh` builds, on cluster nodes and in the custom image alike.
JOB_PYTHON = "/opt/verger/venv/bin/python3.11"
# Where the image keeps the ONNX model it converted at build time (emr_job.engines reads
# VERGER_CACHE_DIR): with it, no executor converts the model again. Owned by the job's user, so
# downloaded weights and a conversion for other weights can land there too.
MODEL_CACHE_DIR = "/opt/verger/cache"
# EMR Serverless reruns a failed batch job from the start (releases 7.1.0 and later); the job is
# idempotent per (image key, etag), so a second attempt redoes only what was not committed.
MAX_ATTEMPTS = 2
LOG_PREFIX = "logs/emr-serverless/"


@dataclass(frozen=True)
class WorkerSizes:
    """Driver and executor workers, in sizes EMR Serverless offers (vCPU; GB of memory).

    A worker's memory is the Spark memory plus its overhead. Executors keep a large overhead
    because the Python workers (one ONNX Runtime session each; README: 1,751 MiB for two) live outside
    the JVM heap. A job starts with one executor and asks for more while tasks wait (a batch of a
    hundred photos never pays for four); `max_executors` caps a job, the application's
    MaximumCapacity all jobs.
    """

    driver_cores: int = 2
    driver_memory_gb: int = 6
    executor_cores: int = 4
    executor_memory_gb: int = 8
    executor_memory_overhead_gb: int = 6
    max_executors: int = 4

    def spark_properties(self) -> dict[str, str]:
        return {
            "spark.driver.cores": str(self.driver_cores),
            "spark.driver.memory": f"{self.driver_memory_gb}g",
            "spark.executor.cores": str(self.executor_cores),
            "spark.executor.memory": f"{self.executor_memory_gb}g",
            "spark.executor.memoryOverhead": f"{self.executor_memory_overhead_gb}g",
            "spark.dynamicAllocation.initialExecutors": "1",
            "spark.dynamicAllocation.maxExecutors": str(self.max_executors),
        }


def catalog_environment(region: str) -> dict[str, str]:
    """What lets pyiceberg find the Glue catalog the job commits to (cluster and job runs alike)."""
    catalog = f"PYICEBERG_CATALOG__{CATALOG_NAME.upper()}"
    return {
        f"{catalog}__TYPE": "glue",
        f"{catalog}__GLUE__REGION": region,
        f"{catalog}__S3__REGION": region,
        "AWS_DEFAULT_REGION": region,
    }


def job_environment(region: str) -> dict[str, str]:
    """Environment variables the job's driver and executors need."""
    return {
        "PYSPARK_PYTHON": JOB_PYTHON,
        "PYSPARK_DRIVER_PYTHON": JOB_PYTHON,
        **catalog_environment(region),
        "VERGER_CACHE_DIR": MODEL_CACHE_DIR,
    }


def spark_properties(region: str, sizes: WorkerSizes = WorkerSizes()) -> dict[str, str]:
    """Every `--conf` of a job run: Python, environment of driver and executors, sizes."""
    properties = {"spark.pyspark.python": JOB_PYTHON, "spark.pyspark.driver.python": JOB_PYTHON}
    for name, value in job_environment(region).items():
        properties[f"spark.emr-serverless.driverEnv.{name}"] = value
        properties[f"spark.executorEnv.{name}"] = value
    return {**properties, **sizes.spark_properties()}


def spark_submit_parameters(properties: dict[str, str]) -> str:
    """`--conf key=value …` in a stable order; a value with whitespace would split, so it is refused.

    Examples
    --------
    >>> spark_submit_parameters({"spark.b": "2", "spark.a": "1"})
    '--conf spark.a=1 --conf spark.b=2'
    """
    for key, value in properties.items():
        if not value or any(character.isspace() for character in key + value):
            raise ValueError(f"Spark property {key}={value!r} is empty or contains whitespace")
    return " ".join(f"--conf {key}={value}" for key, value in sorted(properties.items()))


def job_run_request(region: str, bucket: str, sizes: WorkerSizes = WorkerSizes()) -> dict:
    """The parts of StartJobRun besides ids, name and entry point: Spark properties, logs, retries."""
    return {
        "sparkSubmitParameters": spark_submit_parameters(spark_properties(region, sizes)),
        "configurationOverrides": {
            "monitoringConfiguration": {
                "s3MonitoringConfiguration": {"logUri": f"s3://{bucket}/{LOG_PREFIX}"}
            }
        },
        "retryPolicy": {"maxAttempts": MAX_ATTEMPTS},
    }
