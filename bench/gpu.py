"""GPU path: kdgrid's training loop against the bare loop on a CUDA device (examples/s, GPU utilisation).

Pairs (teacher -> student, batch 32, every row 128 tokens, random token ids: a fixed shape):

* MiniLM-L6 (real weights) -> 2 layers (teacher layers 3 and 6)
* bert-base-sized teacher (12 x 768, 12 heads, random weights) -> 4 layers (teacher layers 3, 6, 9, 12)

for vanilla KD and Att-KL + Hid-Seq, in fp32 (TF32 matmuls) and bf16 autocast. kdgrid side:
``kdgrid.train.loop.train_stage`` with ``DistillObjective``/``TeacherOutputs`` (fused AdamW on CUDA, SDPA
attention with Q/K/V captured by hooks, no host sync per step); bare side: ``bench/step_efficiency.py``'s
hand-written loop with the same optimiser settings. Whole passes of ``--steps`` steps alternate (A B A B)
after a warm-up pass; each pass ends with ``torch.cuda.synchronize()``. GPU utilisation is sampled with
NVML (pynvml) or ``nvidia-smi`` while a pass runs. ``--compile`` adds a bare loop with
``torch.compile``-d models for reference (kdgrid has no compile switch yet).

Without a CUDA device it prints 'no CUDA device: skipped' and exits 0 (``--cpu-smoke`` runs the
same code on the CPU at toy sizes, to check the script itself).

    python bench/gpu.py
    python bench/gpu.py --steps 100 --rounds 5 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


class Utilisation:
    """Mean GPU utilisation (%) while the block runs: NVML if importable, else nvidia-smi, else None."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Utilisation:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

            def poll() -> None:
                while not self._stop.is_set():
                    self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                    time.sleep(0.05)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        except Exception:
            if shutil.which("nvidia-smi"):
                self._proc = subprocess.Popen(
                    ["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     "-lms", "100"], stdout=subprocess.PIPE, text=True)

                def read() -> None:
                    assert self._proc is not None and self._proc.stdout is not None
                    for line in self._proc.stdout:
                        try:
                            self.samples.append(float(line.strip()))
                        except ValueError:
                            pass

                self._thread = threading.Thread(target=read, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def models(pair: str, device: Any, smoke: bool) -> tuple[Any, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    if pair == "minilm-l6->2" and not smoke:
        teacher, _ = C.load_minilm_teacher(device=str(device))
        return teacher, C.make_student(teacher, 2).to(device)
    if smoke:
        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=128, num_labels=2, attn_implementation="sdpa")
        layers = 2
    else:
        cfg = BertConfig(num_labels=2, attn_implementation="sdpa")  # bert-base: 12 x 768, 12 heads, 3072
        layers = 4
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(cfg).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, C.make_student(teacher, layers).to(device)


def batches(n: int, vocab: int, length: int, device: Any) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (32, length), generator=g)
        out.append({k: v.to(device) for k, v in {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (32,), generator=g), "indices": torch.arange(32)}.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--pairs", default="minilm-l6->2,bert-base->4")
    ap.add_argument("--objectives", default=",".join(C.OBJECTIVES))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--compile", action="store_true", help="also time a bare loop with torch.compile-d models")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run everything on the CPU at toy sizes")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: skipped")
        return
    from step_efficiency import BareLoop

    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        C.set_threads(1)
        args.steps, args.rounds, args.length = min(args.steps, 3), min(args.rounds, 1), min(args.length, 16)
    else:
        # What kdgrid's run_one sets for a CUDA device (configure_gpu).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = "CPU smoke test" if smoke else torch.cuda.get_device_name(device)
    C.header(f"GPU path: kdgrid train_stage vs bare loop ({name})", None, steps=args.steps, rounds=args.rounds,
             length=args.length, batch=32)

    summary = []
    for pair in args.pairs.split(","):
        teacher, student0 = models(pair, device, smoke)
        data = batches(args.steps, teacher.config.vocab_size, args.length, device)
        dev = data[:1]
        n_ex = 32 * len(data)
        for prec in args.precisions.split(","):
            amp = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if prec == "bf16" else None
            for obj in args.objectives.split(","):
                spec = C.OBJECTIVES[obj]
                utils: dict[str, list[float]] = {}

                def sync() -> None:
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                def timed(label: str, fn: Any) -> float:
                    sync()
                    with Utilisation() as u:
                        t0 = time.perf_counter()
                        fn()
                        sync()
                        dt = time.perf_counter() - t0
                    if u.mean is not None:
                        utils.setdefault(label, []).append(u.mean)
                    return n_ex / dt

                def run_kdgrid() -> float:
                    student = copy.deepcopy(student0)
                    return timed("kdgrid", lambda: C.kdgrid_stage(teacher, student, spec, data, dev, seed=0,
                                                                   device=device, autocast=amp))

                def run_bare(compiled: bool = False) -> float:
                    loop = BareLoop(teacher, copy.deepcopy(student0), spec, device=device)
                    loop.start(len(data))
                    if compiled:
                        loop.student = torch.compile(loop.student)
                        loop.teacher = torch.compile(teacher)

                    def go() -> None:
                        torch.manual_seed(0)
                        for b in data:
                            loop.step(b, amp)

                    try:
                        return timed("bare+compile" if compiled else "bare", go)
                    finally:
                        loop.close()

                variants = {"kdgrid": run_kdgrid, "bare": run_bare}
                if args.compile:
                    variants["bare+compile"] = lambda: run_bare(True)
                res = C.alternate(variants, args.rounds, verbose=False)
                ratio, lo, hi = C.paired_ratio(res["kdgrid"], res["bare"])
                mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
                summary.append((pair, prec, obj, C.median(res["kdgrid"]), C.median(res["bare"]), ratio, lo, hi,
                                {k: C.median(v) for k, v in utils.items()},
                                C.median(res["bare+compile"]) if "bare+compile" in res else None, mem))
                print(f"   {pair} {prec} {obj}: kdgrid {C.median(res['kdgrid']):.0f} ex/s, bare "
                      f"{C.median(res['bare']):.0f} ex/s, ratio {ratio:.3f}", flush=True)
        del teacher, student0, data
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    print("\nRESULT kdgrid examples/s / bare-loop examples/s (whole passes A B A B, median [min..max]; target >= 0.95)")
    for pair, prec, obj, kd, bare, ratio, lo, hi, util, comp, mem in summary:
        u = ", ".join(f"{k} {v:.0f}%" for k, v in util.items()) or "n/a (no NVML / nvidia-smi)"
        extra = f"; bare+compile {comp:.0f} ex/s" if comp is not None else ""
        print(f"   {pair:14s} {prec:4s} {obj:15s} kdgrid {kd:7.0f} ex/s  bare {bare:7.0f} ex/s  ratio {ratio:.3f} "
              f"[{lo:.3f}..{hi:.3f}] {'met' if ratio >= 0.95 else 'NOT met'}; GPU util {u}{extra}; peak {mem:.0f} MiB")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
