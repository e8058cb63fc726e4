"""experiments.setfit_compare runs end to end on tiny budgets: every method on the same episodes, SetFit paired."""
import json

from experiments import setfit_compare


def test_setfit_compare_quick(tmp_path):
    out = tmp_path / "run"
    payload = setfit_compare.main(["--quick", "--settings", "5x1", "--setfit-iterations", "1", "--lr-grid", "1.0",
                                   "--quiet", "--output-dir", str(out)])
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == set(setfit_compare.METHODS)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 for r in rows.values())
    assert all(r["n"] == 6 for m, r in rows.items() if m != "setfit")
    assert rows["setfit"]["n"] == 3 and rows["recipe"]["setfit_n"] == 3
    assert rows["recipe"]["recipe"]["steps"] >= 1 and rows["recipe"]["recipe"]["guard"] is True
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    table = (out / "table.md").read_text()
    assert "python -m experiments.setfit_compare --quick" in table and "| 5-way 1-shot | setfit |" in table
