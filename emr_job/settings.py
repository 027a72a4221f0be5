"""What one run of the job needs to know beyond its manifest."""
from __future__ import annotations

from dataclasses import dataclass

from contract import layout
from emr_job.engines import DEFAULT_ENGINE
from emr_job.engines.precision import DEFAULT_PRECISION


@dataclass(frozen=True)
class JobSettings:
    warehouse: str
    weights_path: str  # local, already validated
    variance: float = layout.DEFAULT_VARIANCE_TARGET
    engine: str = DEFAULT_ENGINE
    precision: str = DEFAULT_PRECISION  # resolved: fp32 or bf16, never auto
    batch_size: int = 8  # OpenVINO runs ~35 % more img/s per core than at 32 (activations stay in L2)
    drift_margin: float = 0.05
