"""The model ready in every Python worker before the first partition needs it.

A fresh executor's first pandas task pays for starting a Python worker, importing pandas and
pyarrow and loading the model: about 2.5 s here. For a listing batch (sweep, full), which always
goes to the executors, `start` runs one small task per core for exactly that, in a background
thread, while the batch is planned. (A keyed batch is planned on the driver in well under a
second, and one small enough runs in the driver: warming the executors for it would only take
their cores.) The extraction's tasks then run in the same workers
(`spark.python.worker.reuse`), where `load_extractor` finds the model already built. A failed
warm-up only loses the head start: the extraction loads the model itself and fails its task, with
the real error, if that fails too.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import pandas as pd
from pyspark import InheritableThread, SparkFiles
from pyspark.sql import SparkSession

from emr_job.engines import Extractor, load_extractor
from emr_job.engines.int8_model import MODEL_FILES, MODEL_XML
from emr_job.settings import JobSettings


def model_loader(spark: SparkSession, settings: JobSettings) -> Callable[[], Extractor]:
    """What a task calls to get the batch's extractor (shipping the weights to the executors)."""
    spark.sparkContext.addFile(settings.weights_path)
    weights_name = os.path.basename(settings.weights_path)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    engine, precision = settings.engine, settings.precision
    shipped_int8 = precision == "int8" and settings.int8_model
    if shipped_int8:
        # file by file: Spark ships a local folder only to a local master (UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY)
        for name in MODEL_FILES:
            spark.sparkContext.addFile(os.path.join(settings.int8_model, name))

    def loader() -> Extractor:
        return load_extractor(SparkFiles.get(weights_name), engine, threads, precision=precision,
                              int8_model=os.path.dirname(SparkFiles.get(MODEL_XML)) if shipped_int8 else None)

    return loader


def start(spark: SparkSession, loader: Callable[[], Extractor]) -> InheritableThread:
    """Load the model in one task per core, in the background; join the thread before the job ends."""
    cores = spark.sparkContext.defaultParallelism

    def load(frames):
        for frame in frames:
            loader()
            yield pd.DataFrame({"id": frame["id"]})

    def run() -> None:
        try:
            spark.range(cores, numPartitions=cores).mapInPandas(load, "id long").collect()
        except Exception as error:  # any failure only costs the head start; the extraction reports it
            print(f"verger: the model warm-up failed ({type(error).__name__}); the extraction loads it "
                  "itself", file=sys.stderr)

    thread = InheritableThread(target=run, name="verger-model-warm-up", daemon=True)
    thread.start()
    return thread
