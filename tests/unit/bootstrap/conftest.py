"""A miniature Verger checkout (contract/, emr_job/ with step.py, bootstrap/) to stage and install,
so the tests build a real wheel in seconds and do not depend on the job's current state."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from bootstrap.locks import JOB_LOCK

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "emr_job").mkdir(parents=True)
    (root / "bootstrap").mkdir()
    shutil.copytree(REPO / "contract", root / "contract", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "emr_job" / "__init__.py").write_text("")
    (root / "emr_job" / "step.py").write_text("print('the job entry script')\n")
    for script in ("emr_bootstrap.sh", "emr_notebook.sh"):
        shutil.copy(REPO / "bootstrap" / script, root / "bootstrap" / script)
    shutil.copy(JOB_LOCK.path, root / "bootstrap" / JOB_LOCK.filename)
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "verger"
        version = "0.1.0"

        [tool.setuptools.packages.find]
        include = ["contract*", "emr_job*"]
        """))
    return root
