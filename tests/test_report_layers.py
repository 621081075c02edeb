"""The report says which teacher layers each condition's students copied and learn from (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_cola_dir
from test_cli_e2e import kdgrid


@pytest.mark.slow
def test_report_shows_layers_copied_and_mapped(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_cola_dir(tmp_path / "glue", n_train=32, n_dev=12)
    study = tmp_path / "layers.yaml"
    study.write_text(f"""
name: layers
tasks: [cola]
seeds: 2
teacher: {{model: {tiny_model_dir}, finetune: {{epochs: 1, batch_size: 8}}}}
student: {{layers: 2}}
data: {{dir: {data}, max_seq_length: 32}}
train: {{epochs: 1, batch_size: 8, lr: 1.0e-3, eval_every_epoch: false}}
objective:
  intermediate: {{hidden: seq, alpha: 0.0}}
variants:
  design:
    first-last: {{objective.mapping: first_last}}
    learnable: {{objective.mapping: {{kind: learnable}}}}
    copy-other: {{objective.mapping: first_last, student.init_layers: [2, 3]}}
""")
    db = tmp_path / "k.duckdb"
    kdgrid("run", str(study), "--db", str(db), cwd=tmp_path)
    out = tmp_path / "rep"
    for fmt in ("json", "md"):
        kdgrid(
            "report",
            "--db",
            str(db),
            "--study",
            "layers",
            "--out",
            str(out),
            "--format",
            fmt,
            "--no-plots",
            cwd=tmp_path,
        )
    layers = {r["cell"]: (r["copied"], r["mapped"]) for r in json.loads((out / "report.json").read_text())["layers"]}
    # The tiny teacher has 4 layers: first_last on 2 student layers copies and maps 1 and 4; the learnable
    # mapping starts on the uniform map (2, 4) and the student copies those; init_layers overrides the copy only.
    assert layers == {
        "design=first-last": ("1-4", "1-4"),
        "design=learnable": ("2-4", "learnable over 2-4"),
        "design=copy-other": ("2-3", "1-4"),
    }
    md = (out / "report.md").read_text()
    assert "## Layers copied and mapped" in md and "learnable over 2-4" in md
