"""benchmarks.eval_speed runs end to end on the real encoder (2 episodes): every variant, the same accuracies."""
import logging
import re

from benchmarks import eval_speed
from metalearn.foundation import native_bf16


def test_eval_speed_runs_every_variant_and_reuse_keeps_the_accuracies(capsys):
    level = logging.getLogger("metalearn").level
    eval_speed.main(["--episodes", "2", "--val-episodes", "1", "--lr-grid", "1.0", "--no-batched", "--workers", "2"])
    assert logging.getLogger("metalearn").level == level  # a caller's logging stays as it was
    out = capsys.readouterr().out
    assert "CPU seconds" in out and "WALL seconds" in out
    equal = dict(re.findall(r"^(.+?): (\d+/\d+) accuracies equal", out, flags=re.M))
    assert equal["after"].split("/")[0] == equal["after"].split("/")[1]  # reuse changes no accuracy
    rows = {"before (reuse=False)", "after"} | ({"after, compute_dtype=bfloat16",
                                                 "after, compute_dtype=bfloat16, workers=2"} if native_bf16() else set())
    assert set(equal) == rows
