"""benchmarks.gpu runs end to end in --quick mode (tiny shape, CPU): every variant, and batched equals loop."""
from benchmarks import gpu


def test_gpu_benchmark_quick_mode_runs_every_variant(capsys):
    rows = gpu.main(["--quick"])
    assert {(r["meta-batch"], r["order"], r["engine"]) for r in rows} == {
        (m, o, e) for m in (2, 4) for o in ("second", "first") for e in ("loop", "batched")}
    assert all(not r["oom"] and r["tasks_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    batched = [r for r in rows if r["engine"] == "batched"]
    assert all(r["max_rel_diff"] < 1e-4 for r in batched)  # the same meta-gradient as the loop's
    graph = {(r["meta-batch"], r["order"], r["engine"]): r["peak_mb"] for r in rows}
    assert graph[4, "second", "batched"] > graph[4, "second", "loop"]  # batching holds every task's graph at once
    out = capsys.readouterr().out
    assert "| meta-batch | order | engine |" in out and out.count("| batched |") == 4
