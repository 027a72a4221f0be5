"""The job and Lambda locks cannot drift from pyproject.toml."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bootstrap import locks

REPO = Path(__file__).resolve().parents[3]


def pinned_versions(lock: locks.Lock) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", lock.path.read_text(), flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


@pytest.mark.parametrize("lock", locks.LOCKS, ids=lambda lock: lock.extra)
def test_committed_lock_was_compiled_from_the_current_pyproject(lock):
    # WHEN the lock's recorded fingerprint is compared with pyproject.toml  THEN they match
    # (if this fails: python -m bootstrap.locks, then commit the locks)
    locks.check(lock)


def test_changing_a_pin_in_pyproject_makes_the_job_lock_stale(tmp_path):
    # GIVEN a pyproject whose job extra pins another TensorFlow
    pyproject = tmp_path / "pyproject.toml"
    shutil.copy(REPO / "pyproject.toml", pyproject)
    text = pyproject.read_text()
    assert '"tensorflow-cpu==' in text
    pyproject.write_text(re.sub(r'"tensorflow-cpu==[^"]+"', '"tensorflow-cpu==2.20.0"', text))
    # WHEN the committed lock is checked against it  THEN it is reported stale, with the fix
    with pytest.raises(locks.LockError, match="stale.*python -m bootstrap.locks"):
        locks.check(locks.JOB_LOCK, pyproject)


def test_the_job_lock_ignores_changes_to_other_extras(tmp_path):
    # GIVEN a pyproject whose dev extra gained a package
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text().replace('"pytest>=8",', '"pytest>=8", "rich",'))
    assert pyproject.read_text() != (REPO / "pyproject.toml").read_text()
    # WHEN the job lock is checked  THEN it is still current
    locks.check(locks.JOB_LOCK, pyproject)


@pytest.mark.parametrize("lock", locks.LOCKS, ids=lambda lock: lock.extra)
def test_every_direct_requirement_of_the_extra_is_pinned_within_its_range(lock):
    pins = pinned_versions(lock)
    for line in locks.extra_requirements(REPO / "pyproject.toml", lock.extra):
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        if name in lock.excluded:
            continue
        assert name in pins, f"{name} missing from {lock.filename}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_job_lock_leaves_pyspark_to_the_cluster():
    # THEN EMR's own pyspark is not reinstalled over it
    assert not {"pyspark", "py4j"} & set(pinned_versions(locks.JOB_LOCK))


def test_every_pin_carries_a_hash_so_pip_verifies_what_it_downloads():
    text = locks.JOB_LOCK.path.read_text()
    requirements = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3].strip())
    assert requirements and all("--hash=sha256:" in block for block in requirements)


def test_an_unknown_extra_is_named(tmp_path):
    with pytest.raises(locks.LockError, match="no optional-dependencies group 'gpu'"):
        locks.extra_requirements(REPO / "pyproject.toml", "gpu")
