"""The few-shot intent experiment runs end to end (--quick) on the real encoder in NF4 and the real data."""
import json

from experiments import clinc_intents


def test_clinc_intents_quick(tmp_path):
    out = tmp_path / "clinc"
    clinc_intents.main(["--quick", "--quiet", "--output-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for r in summary["rows"] if not r.get("paired")]
    methods = {r["method"] for r in rows}
    assert {"protomaml", "protonet", "random_init", "prototypes", "linear_probe", "zero_shot",
            "protomaml+guard"} <= methods
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows)
    paired = [r for r in summary["rows"] if r.get("paired")]
    assert paired and all(r["reference"] == "prototypes" for r in paired)
    table = (out / "summary.md").read_text()
    assert "| protomaml |" in table and "clinc150_5way_1shot" in table
    setting = out / "clinc150_5way_1shot"
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in setting.iterdir())
    assert (out / "train_protomaml" / "learner" / "prompt" / "adapter_config.json").exists()
