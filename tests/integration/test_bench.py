"""`verger bench` end to end on a small sample: both jobs run and the ratio is the last line."""
import re

from tests.conftest import SHARED, require
from verger.cli import main


def test_bench_runs_both_jobs_and_ends_with_the_ratio(fruits, weights, capsys):
    baseline = require(SHARED / "bench" / "baseline_notebook.py", "the notebook baseline")
    assert main(["bench", "--images", str(fruits), "--limit", "140", "--weights", weights,
                 "--baseline", str(baseline)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio verger/baseline: \d+\.\d\dx", lines[-1])
    assert re.search(r"baseline notebook :\s+\d+\.\d img/s\s+\(40 in", "\n".join(lines))
    assert re.search(r"verger job\s+:\s+\d+\.\d img/s\s+\(40 in", "\n".join(lines))
    assert re.search(r"incremental 100 images: .* \(ratio \d+\.\d\d; PCA refit vs applied, \d+\.\d s in PCA into the store\)", "\n".join(lines))
    assert re.search(r"Python workers [1-9][\d,]* MiB", lines[2])
