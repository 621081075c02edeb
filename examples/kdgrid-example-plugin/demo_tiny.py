"""Write studies/plugin_example.yaml scaled to a laptop: the tests' tiny random BERT as teacher, on synthetic
CoLA-layout rows whose label follows a word rule (10% label noise), so the whole study runs in minutes on a CPU.

    python examples/kdgrid-example-plugin/demo_tiny.py /tmp/demo
    cd /tmp/demo && kdgrid run plugin_example-tiny.yaml --db tiny.duckdb --workers 2 && kdgrid report --db tiny.duckdb

The numbers say nothing about the methods on real data: they show the path from a plug-in to a report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import build_tiny_model_dir  # noqa: E402  (the tests' tiny model and vocabulary)

WORDS = ["the", "movie", "was", "good", "bad", "very", "boring", "great", "film", "dog", "cat", "sat", "on"]


def main(out: Path) -> None:
    model = build_tiny_model_dir(out / "model")
    rng = np.random.default_rng(0)
    (out / "glue" / "CoLA").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 400), ("dev", 200)):
        rows = []
        for _ in range(n):
            sent = list(rng.choice(WORDS, size=int(rng.integers(3, 16))))
            pos = sent.count("good") + sent.count("great")
            neg = sent.count("bad") + sent.count("boring")
            label = int(pos > neg) if rng.random() > 0.1 else int(rng.integers(0, 2))
            rows.append(f"src\t{label}\t\t{' '.join(sent)} .")
        (out / "glue" / "CoLA" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    study = yaml.safe_load((ROOT / "studies" / "plugin_example.yaml").read_text())
    study.update(name="plugin_example-tiny", tasks=["cola"], seeds=5)
    study["teacher"] = {"model": str(model), "finetune": {"epochs": 6, "batch_size": 16, "lr": 1.0e-3}}
    study["data"] = {"dir": str(out / "glue"), "max_train_examples": 100, "max_seq_length": 32}
    study["train"].update(lr=5.0e-4, batch_size=16, epochs={"intermediate": 1, "prediction": 2})
    (out / "plugin_example-tiny.yaml").write_text(
        "# studies/plugin_example.yaml on the tests' tiny random BERT (4 layers, width 32), fine-tuned as teacher on\n"
        "# synthetic CoLA-layout rows whose label follows a word rule; students train on 100 of them (10% label noise)\n"
        + yaml.safe_dump(study, sort_keys=False)
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo"))
