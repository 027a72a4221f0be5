"""The Spark session the job runs in: spark-submit's settings on a cluster, sane defaults locally."""
from __future__ import annotations

import os
import sys

from pyspark import SparkConf
from pyspark.sql import SparkSession

ARROW_BATCH_ROWS = 256


def get_session(app_name: str = "verger", cores: int | None = None) -> SparkSession:
    """Reuse spark-submit's configuration when there is one; otherwise local mode on every core.

    `cores` caps local mode (e.g. the benchmark's side-by-side runs).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Python workers must run the interpreter that has the job's packages, not the first `python3`.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    submitted = SparkConf()
    builder = SparkSession.builder.appName(app_name)
    if not submitted.contains("spark.master"):
        builder = builder.master(f"local[{cores or '*'}]").config("spark.driver.memory", "4g")
    for key, value in {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
        "spark.python.worker.reuse": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.showConsoleProgress": "false",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    }.items():
        if not submitted.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
