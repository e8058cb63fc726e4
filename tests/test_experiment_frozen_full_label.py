"""experiments.frozen_full_label scores the full-precision frozen encoder on a whole-label-set task (HWU64, 64 ways)."""
import json

from experiments import frozen_full_label


def test_frozen_full_label_quick(tmp_path):
    payload = frozen_full_label.main(["--quick", "--quiet", "--output-dir", str(tmp_path)])
    scores = {r["method"]: r for r in payload["rows"] if not r.get("paired")}
    assert set(scores) == {"prototypes", "linear_probe"}
    assert all(r["target"] == "hwu64_full" and r["shots"] == 5 and r["n"] == 1 for r in scores.values())
    # 64 ways: chance is 1.6%; the frozen encoder gets most of the 1,076 test queries right
    assert all(0.5 < r["mean"] <= 1.0 for r in scores.values())
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
    assert "| hwu64_full | linear_probe | 5 |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "hwu64_full" / "results.json").is_file()
