"""The README's demo command, end to end on real data (scikit-learn's digits)."""
import json

from dlwt.cli import main


def test_demo_trains_and_writes_results(tmp_path, capsys):
    out = tmp_path / "rules.json"
    assert main(["demo", "--rules", "bp,wm", "--epochs", "2", "--out", str(out)]) == 0
    results = {r["rule"]: r for r in json.loads(out.read_text())["results"]}
    assert results["bp"]["val_top1_acc"] > 0.9  # real learning, not chance (0.1)
    assert results["bp"]["mean_weight_angle_deg"] == 0.0
    assert results["wm"]["val_top1_acc"] > 0.5
    assert 0 < results["wm"]["mean_weight_angle_deg"] < 45  # mirrored B is far closer to W than random
    assert "| wm |" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
