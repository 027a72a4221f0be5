"""What one run of the job needs to know beyond its manifest."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from contract import layout
from emr_job.engines import DEFAULT_ENGINE
from emr_job.engines.int8_model import read_int8_model
from emr_job.engines.precision import DEFAULT_PRECISION


@dataclass(frozen=True)
class JobSettings:
    warehouse: str
    weights_path: str  # local, already validated
    variance: float = layout.DEFAULT_VARIANCE_TARGET
    engine: str = DEFAULT_ENGINE
    precision: str = DEFAULT_PRECISION  # resolved: fp32, bf16 or int8, never auto
    int8_model: str | None = None  # local folder of the int8 model (int8 only)
    batch_size: int = 8  # OpenVINO runs ~35 % more img/s per core than at 32 (activations stay in L2)
    drift_margin: float = 0.05

    @cached_property
    def feature_version(self) -> str:
        """The version of the features this run extracts (`layout.feature_version`); read once,
        since an int8 model's id is checked against its files' sha256."""
        model_id = read_int8_model(self.int8_model).model_id if self.precision == "int8" and self.int8_model else None
        return layout.feature_version(self.precision, model_id)
