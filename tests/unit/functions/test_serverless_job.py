"""An EMR Serverless job run carries everything the EMR cluster's configurations give the job.

The cluster side is the cluster definition's `Configurations` (functions/cluster.py, the RunJobFlow
request the trigger sends, for the stack's region). `cluster_job_settings` reads both the API's
shape (`Properties`) and CloudFormation's (`ConfigurationProperties`).
"""
from __future__ import annotations

import math
import shlex

import pytest

from functions import serverless_job
from functions.serverless_job import WorkerSizes, job_run_request, spark_properties, spark_submit_parameters
from functions.cluster import spark_configurations
from verger.template import load_template, resource_properties

REGION = "eu-west-3"
DRIVER_ENV = "spark.emr-serverless.driverEnv."
EXECUTOR_ENV = "spark.executorEnv."
APP_MASTER_ENV = "spark.yarn.appMasterEnv."
# EMR Serverless worker sizes (vCPU -> GB of memory allowed), from the EMR Serverless User Guide,
# "Supported worker configurations".
WORKER_MEMORY_GB = {1: range(2, 9), 2: range(4, 17), 4: range(8, 31), 8: range(16, 61, 4), 16: range(32, 121, 8)}


def split_by_prefix(properties: dict[str, str], prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """(the variables set by `prefix`NAME properties, the other properties)."""
    inside = {key[len(prefix):]: value for key, value in properties.items() if key.startswith(prefix)}
    return inside, {key: value for key, value in properties.items() if not key.startswith(prefix)}


def cluster_job_settings(configurations: list[dict]) -> dict[str, dict[str, str]]:
    """What a cluster built with these EMR configurations gives the job: the driver's and the
    executors' environment (spark-env exports reach the driver, and so do appMasterEnv in cluster
    deploy mode) and the other Spark properties (spark-defaults)."""
    by_class = {c["Classification"]: c for c in configurations}

    def properties(configuration: dict) -> dict[str, str]:
        return {k: str(v) for k, v in configuration.get("ConfigurationProperties", configuration.get("Properties", {})).items()}

    exports = {}
    for nested in by_class.get("spark-env", {}).get("Configurations", []):
        if nested["Classification"] == "export":
            exports.update(properties(nested))
    app_master_env, rest = split_by_prefix(properties(by_class.get("spark-defaults", {})), APP_MASTER_ENV)
    executor_env, spark = split_by_prefix(rest, EXECUTOR_ENV)
    return {"driver_env": {**exports, **app_master_env}, "executor_env": executor_env, "spark": spark}


def serverless_job_settings(properties: dict[str, str]) -> dict[str, dict[str, str]]:
    driver_env, rest = split_by_prefix(properties, DRIVER_ENV)
    executor_env, spark = split_by_prefix(rest, EXECUTOR_ENV)
    return {"driver_env": driver_env, "executor_env": executor_env, "spark": spark}


@pytest.fixture(scope="module")
def cluster_settings() -> dict[str, dict[str, str]]:
    return cluster_job_settings(spark_configurations(REGION))


def parsed_parameters(text: str) -> dict[str, str]:
    words = shlex.split(text)
    assert words[::2] == ["--conf"] * (len(words) // 2) and len(words) % 2 == 0, words
    return dict(word.split("=", 1) for word in words[1::2])


@pytest.mark.parametrize("part", ["driver_env", "executor_env", "spark"])
def test_a_job_run_carries_every_setting_the_cluster_configures_with_the_same_values(cluster_settings, part):
    # GIVEN what the cluster's configurations give the job, and the Spark properties of a job run
    sent = serverless_job_settings(parsed_parameters(job_run_request(REGION, "b")["sparkSubmitParameters"]))
    # THEN every driver variable, executor variable and Spark property is there with the same value
    assert cluster_settings[part], f"the cluster configures no {part}: is this still the right source?"
    missing = {k: v for k, v in cluster_settings[part].items() if sent[part].get(k) != v}
    assert not missing, f"the job run lacks or differs on the cluster's {part}: {missing}"


def test_the_cluster_comparison_sees_a_setting_added_to_the_cluster_only(cluster_settings):
    # GIVEN the cluster's configurations with one more driver variable
    configurations = spark_configurations(REGION)
    for configuration in configurations:
        if configuration["Classification"] == "spark-defaults":
            configuration["Properties"][f"{APP_MASTER_ENV}NEW_SETTING"] = "1"
    # WHEN / THEN the comparison finds it missing from the job run
    widened = cluster_job_settings(configurations)["driver_env"]
    sent = serverless_job_settings(spark_properties(REGION))["driver_env"]
    assert "NEW_SETTING" in widened and "NEW_SETTING" not in sent


def test_the_template_shape_of_configurations_reads_the_same_as_the_api_shape(cluster_settings):
    # GIVEN the cluster's configurations rewritten as CloudFormation writes them (ConfigurationProperties)
    as_template = [
        {"Classification": c["Classification"], "ConfigurationProperties": c.get("Properties", {}),
         "Configurations": [{"Classification": n["Classification"], "ConfigurationProperties": n["Properties"]}
                            for n in c.get("Configurations", [])]}
        for c in spark_configurations(REGION)
    ]
    # THEN both shapes give the same job settings
    assert cluster_job_settings(as_template) == cluster_settings


def test_driver_and_executors_run_the_image_venv_and_read_its_prebuilt_model():
    # GIVEN the job run's settings (tests/unit/bootstrap/test_dockerfile.py ties these paths to the image)
    settings = serverless_job_settings(spark_properties(REGION))
    # THEN driver and executors run the venv's Python and read the model cache the image fills
    for env in (settings["driver_env"], settings["executor_env"]):
        assert env["PYSPARK_PYTHON"] == serverless_job.JOB_PYTHON
        assert env["VERGER_CACHE_DIR"] == serverless_job.MODEL_CACHE_DIR


def worker_memory_gb(memory_gb: int, overhead_gb: float | None = None) -> int:
    """A worker's memory: Spark memory plus overhead (default max(384 MB, 10 %)), rounded up."""
    overhead = overhead_gb if overhead_gb is not None else max(0.384, 0.1 * memory_gb)
    return math.ceil(memory_gb + overhead)


def test_driver_and_executor_sizes_are_worker_sizes_emr_serverless_offers():
    sizes = WorkerSizes()
    driver = worker_memory_gb(sizes.driver_memory_gb)
    executor = worker_memory_gb(sizes.executor_memory_gb, sizes.executor_memory_overhead_gb)
    assert driver in WORKER_MEMORY_GB[sizes.driver_cores]
    assert executor in WORKER_MEMORY_GB[sizes.executor_cores]
    # and every size reaches the job run
    sent = parsed_parameters(job_run_request(REGION, "b")["sparkSubmitParameters"])
    assert sizes.spark_properties().items() <= sent.items()


def test_the_application_holds_two_full_size_jobs_at_once_as_the_trigger_may_start_them():
    # GIVEN the application's maximum capacity and the trigger's concurrency
    template = load_template()
    capacity = resource_properties(template, "ServerlessApplication")["MaximumCapacity"]
    concurrency = resource_properties(template, "TriggerFunction")["Events"]["Uploads"]["Properties"]["ScalingConfig"]["MaximumConcurrency"]
    sizes = WorkerSizes()
    job_cpu = sizes.driver_cores + sizes.max_executors * sizes.executor_cores
    job_memory = worker_memory_gb(sizes.driver_memory_gb) + sizes.max_executors * worker_memory_gb(
        sizes.executor_memory_gb, sizes.executor_memory_overhead_gb)
    # THEN that many jobs at their largest fit under it
    assert int(capacity["Cpu"].split()[0]) >= concurrency * job_cpu
    assert int(capacity["Memory"].split()[0]) >= concurrency * job_memory


def test_logs_go_under_the_bucket_logs_prefix_that_expires_and_a_failed_run_is_retried_once():
    body = job_run_request(REGION, "verger-photos")
    assert body["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"]["logUri"] == (
        "s3://verger-photos/logs/emr-serverless/")
    assert body["retryPolicy"] == {"maxAttempts": 2}


def test_a_property_value_that_would_split_on_the_command_line_is_refused():
    with pytest.raises(ValueError, match="spark.x='a b'"):
        spark_submit_parameters({"spark.x": "a b"})
