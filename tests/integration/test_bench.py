"""`verger bench` end to end on a small sample: every run happens and the ratio is the last line."""
import re

from tests.conftest import SHARED, require
from verger.cli import main


def test_bench_runs_every_job_and_ends_with_the_whole_folder_ratio(fruits, weights, capsys):
    # GIVEN 360 photos (100 held back for the incremental batch, 130 in the first batch)
    baseline = require(SHARED / "bench" / "baseline_notebook.py", "the notebook baseline")
    # WHEN the bench runs at fp32
    assert main(["bench", "--images", str(fruits), "--limit", "360", "--weights", weights,
                 "--baseline", str(baseline)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(lines)
    # THEN each run has its row, with a fixed cost where one is measurable
    assert re.search(r"baseline notebook \(Keras\)\s+260\s+[\d.]+\s+[\d.]+\s+-", text)
    assert re.search(r"reference: one process, no Spark\s+260\s+[\d.]+\s+[\d.]+\s+[\d.]+", text)
    assert re.search(r"verger incremental 100 into store\s+100\s+[\d.]+\s+[\d.]+\s+-?[\d.]+", text)
    assert re.search(r"verger first batch 130\s+130\s", text)
    assert re.search(r"verger whole folder 260\s+260\s", text)
    # AND fp32 features equal the baseline's FP32 ones, so accuracy matches and k within 5 %
    quality = re.search(r"cosine mean ([\d.]+) min ([\d.]+); series top-1 FP32 ([\d.]+), verger fp32 ([\d.]+)", text)
    assert quality and float(quality[2]) >= 0.9999 and quality[3] == quality[4]
    k = re.search(r"PCA k FP32 (\d+), verger (\d+)", text)
    assert k and abs(int(k[1]) - int(k[2])) <= 0.05 * int(k[1])
    assert re.search(r"verger whole folder [1-9][\d,]* / [1-9][\d,]* MiB", text)
    assert "bf16" not in lines[-2]  # fp32: no precision targets
    assert re.fullmatch(r"ratio verger/baseline: \d+\.\d\dx", lines[-1])
