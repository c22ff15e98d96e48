"""One unit for AP everywhere: fractions in [0, 1], as in metrics.json, the eval table and the train log."""

from __future__ import annotations

import json

from instaseg.cli.main import main
from instaseg.data.synthetic import generate_synthetic_dataset


def test_eval_table_prints_the_fractions_metrics_json_holds(tmp_path, capsys):
    data = generate_synthetic_dataset(tmp_path / "data", num_images=4, image_size=48, val_fraction=0.5, seed=2)
    gt = json.loads(data.val_annotations.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0 - 0.1 * (k % 3)} for k, a in enumerate(gt["annotations"]) if not a["iscrowd"]]
    results[0]["bbox"] = [0.0, 0.0, 3.0, 3.0]  # one miss: AP below 1, so the digits show the unit
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["eval", "--results", str(tmp_path / "r.json"), "--json", str(data.val_annotations),
                 "--out", str(tmp_path / "ev")]) == 0
    table = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    row = next(line for line in table.splitlines() if line.startswith("| bbox |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert 0.0 < metrics["bbox"]["AP"] < 1.0
    assert cells[0] == f"{metrics['bbox']['AP']:.3f}" and cells[1] == f"{metrics['bbox']['AP50']:.3f}"
