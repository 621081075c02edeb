"""Time per training step of each distillation objective, relative to vanilla KD on the same student.

MiniLM-L6 teacher -> 2-layer student (teacher layers 3 and 6), SST-2 training sentences, batch 32,
dynamic padding, kdgrid's own loop pieces (DistillObjective, TeacherOutputs, student_forward).
The teacher forward runs every step for every objective (no logit cache), so the ratios show what
each loss adds on top of the same teacher + student passes. Objectives are timed in alternation
(round robin, several rounds) and the median step time is reported, so machine load hits all alike.

    python bench/objective_cost.py [--steps 8] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from kdgrid.model_names import resolve_model_path  # noqa: E402
from kdgrid.study.schema import Objective, Student  # noqa: E402
from kdgrid.train.data import load_tokenized, make_loader, subsample_positions  # noqa: E402
from kdgrid.train.loop import TeacherOutputs, student_forward  # noqa: E402
from kdgrid.train.models import build_student, load_classifier, load_tokenizer  # noqa: E402
from kdgrid.train.objectives import DistillObjective  # noqa: E402

OBJECTIVES: dict[str, dict] = {
    "vanilla KD": {},
    "Hid-CLS": {"intermediate": {"hidden": "cls", "alpha": 0.0}},
    "Hid-Seq": {"intermediate": {"hidden": "seq", "alpha": 0.0}},
    "Hid-CLS-Contrast": {"intermediate": {"hidden": "cls_contrast", "alpha": 0.0}},
    "Att-MSE": {"intermediate": {"attention": "mse", "alpha": 1.0}},
    "Att-MSE + Hid-Seq": {"intermediate": {"attention": "mse", "hidden": "seq"}},
    "Att-KL": {"intermediate": {"attention": "kl", "alpha": 1.0}},
    "Att-KL + Hid-Seq": {"intermediate": {"attention": "kl", "hidden": "seq"}},
    "Att-KL + Hid-Seq + Val-KL": {"intermediate": {"attention": "kl", "hidden": "seq", "value": "kl"}},
    "Att-KL + Hid-Seq, learnable map": {"intermediate": {"attention": "kl", "hidden": "seq"}, "mapping": "learnable"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per objective per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("KDGRID_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/glue")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model_path("minilm-l6")
    tok = load_tokenizer(path)
    full = load_tokenized("sst2", "train", args.data, tok, 64, Path("/tmp/kdgrid-bench-cache"))
    data = full.subset(subsample_positions(len(full), 1.0, 32 * (args.steps + 2), 0))
    teacher = load_classifier(path, 2, "sdpa").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loader = make_loader(data, 32, pad_token_id=int(tok.pad_token_id or 0), shuffle=True, seed=0)
    batches = list(loader)
    setups = {}
    for name, obj in OBJECTIVES.items():
        student = build_student(teacher, Student(layers=2), seed=0)
        cfg = Objective.model_validate({"prediction": {"beta": 1.0, "temperature": 2.0}, **obj})
        objective = DistillObjective(cfg, stage="joint", is_regression=False, n_teacher_layers=6, n_student_layers=2,
                                     teacher_hidden=384, student_hidden=384, teacher_heads=12, student_heads=12,
                                     num_train_examples=len(data))
        opt = torch.optim.AdamW([*student.parameters(), *objective.parameters()], lr=1e-4)
        setups[name] = (student, objective, TeacherOutputs(teacher, objective, torch.device("cpu"), None), opt)
    times: dict[str, list[float]] = {n: [] for n in OBJECTIVES}
    for _ in range(args.rounds):
        for name, (student, objective, t_out, opt) in setups.items():
            for i, batch in enumerate(batches[: args.steps + 1]):
                t0 = time.perf_counter()
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                terms = objective(student_forward(student, objective, inputs), t_out(batch, inputs), batch["labels"], batch["indices"])
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                if i:  # the first step of a round warms up
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["vanilla KD"])
    print(f"step time relative to vanilla KD (MiniLM-L6 -> 2 layers, SST-2, batch 32, {args.threads} thread(s), "
          f"median of {args.rounds}x{args.steps} steps; shared 2-core machine: ratios, not absolute times)")
    print(f"{'objective':36s} {'x vanilla':>9s}")
    for name in OBJECTIVES:
        print(f"{name:36s} {statistics.median(times[name]) / base:9.2f}")


if __name__ == "__main__":
    main()
