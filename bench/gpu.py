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

Besides (``--parts``, default all four):

* ``pairs``: the comparison above;
* ``cache``: the teacher cached (``kdgrid.train.activation_cache`` + the logit table, filled under the same
  bf16 autocast, stored as fp16 and as bf16) against the teacher recomputed every step under that autocast,
  both through kdgrid's real loader (``make_loader`` over a random ``TokenizedSet``, host batches moved by the
  loop), per pair and objective;
* ``pin``: kdgrid's loader with ``pin_memory=True`` against pageable batches (MiniLM-L6 -> 2, bf16, cached
  teacher: the step where host-to-device copies weigh most);
* ``slots``: several runs sharing one GPU: 1, 2, 4 processes (``--slots``) each running kdgrid's
  ``train_stage`` (``--slot-pair``/``--slot-objective``, bf16, ``--slot-steps`` steps), started together after
  each has warmed up; aggregate examples/s (all processes' examples / first start to last end) as a ratio
  to one process.

Without a CUDA device it prints 'no CUDA device: skipped' and exits 0 (``--cpu-smoke`` runs every part on
the CPU at toy sizes, to check the script itself). The default run is budgeted to finish in under 8 minutes
on one H200 (each part prints its own time); as a safety net no part starts after ``--budget-s`` (360 s), and a
part skipped for it says so in the RESULT block.

    python bench/gpu.py
    python bench/gpu.py --parts pairs --steps 100 --rounds 5 --compile
    python bench/gpu.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
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
                    [
                        "nvidia-smi",
                        "-i",
                        str(self.index),
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-lms",
                        "100",
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )

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
        cfg = BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=2,
            attn_implementation="sdpa",
        )
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
        out.append(
            {
                k: v.to(device)
                for k, v in {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (32,), generator=g),
                    "indices": torch.arange(32),
                }.items()
            }
        )
    return out


def random_set(n: int, vocab: int, length: int, seed: int = 0) -> Any:
    """A kdgrid ``TokenizedSet`` of ``n`` rows of random token ids, every row ``length`` tokens."""
    import numpy as np

    from kdgrid.train.data import TokenizedSet

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=n * length).astype(np.int32)
    return TokenizedSet(
        ids=ids,
        offsets=np.arange(n + 1, dtype=np.int64) * length,
        type_ids=np.zeros(n * length, dtype=np.int32),
        labels=rng.integers(0, 2, size=n),
        source_index=np.arange(n),
    )


def loader_source(tset: Any, pin: bool) -> Any:
    """kdgrid's loader path as run.py builds it: ``make_loader`` batches with ``example_ids``, per epoch."""
    import torch

    from kdgrid.train.data import make_loader

    loader = make_loader(tset, 32, pad_token_id=0, shuffle=True, seed=0, is_regression=False, pin_memory=pin)
    positions = torch.arange(len(tset))

    def source(epoch: int) -> Any:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            batch["example_ids"] = positions[batch["indices"]]
            yield batch

    return source, len(loader)


class Bench:
    """What every part shares: device, sync, timed passes with GPU utilisation."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.smoke = args.cpu_smoke
        self.device = torch.device("cpu" if self.smoke else "cuda")

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def amp(self, prec: str) -> Any:
        import torch

        dev = self.device.type
        return (lambda: torch.autocast(device_type=dev, dtype=torch.bfloat16)) if prec == "bf16" else None

    def timed(self, n_ex: int, fn: Any, utils: dict[str, list[float]] | None = None, label: str = "") -> float:
        self.sync()
        with Utilisation() as u:
            t0 = time.perf_counter()
            fn()
            self.sync()
            dt = time.perf_counter() - t0
        if u.mean is not None and utils is not None:
            utils.setdefault(label, []).append(u.mean)
        return n_ex / dt

    def free(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


def part_pairs(b: Bench) -> list[str]:
    """kdgrid train_stage vs the bare loop, per pair x precision x objective."""
    import torch
    from step_efficiency import BareLoop

    args, device = b.args, b.device
    summary = []
    for pair in args.pairs.split(","):
        teacher, student0 = models(pair, device, b.smoke)
        data = batches(args.steps, teacher.config.vocab_size, args.length, device)
        dev = data[:1]
        n_ex = 32 * len(data)
        for prec in args.precisions.split(","):
            amp = b.amp(prec)
            for obj in args.objectives.split(","):
                spec = C.OBJECTIVES[obj]
                utils: dict[str, list[float]] = {}

                def run_kdgrid() -> float:
                    student = copy.deepcopy(student0)
                    return b.timed(
                        n_ex,
                        lambda: C.kdgrid_stage(teacher, student, spec, data, dev, seed=0, device=device, autocast=amp),
                        utils,
                        "kdgrid",
                    )

                def run_bare(compiled: bool = False) -> float:
                    loop = BareLoop(teacher, copy.deepcopy(student0), spec, device=device)
                    loop.start(len(data))
                    if compiled:
                        loop.student = torch.compile(loop.student)
                        loop.teacher = torch.compile(teacher)

                    def go() -> None:
                        torch.manual_seed(0)
                        for x in data:
                            loop.step(x, amp)

                    try:
                        return b.timed(n_ex, go, utils, "bare+compile" if compiled else "bare")
                    finally:
                        loop.close()

                variants = {"kdgrid": run_kdgrid, "bare": run_bare}
                if args.compile:
                    variants["bare+compile"] = lambda: run_bare(True)
                res = C.alternate(variants, args.rounds, verbose=False)
                ratio, lo, hi = C.paired_ratio(res["kdgrid"], res["bare"])
                mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
                util = ", ".join(f"{k} {C.median(v):.0f}%" for k, v in utils.items()) or "n/a (no NVML / nvidia-smi)"
                comp = f"; bare+compile {C.median(res['bare+compile']):.0f} ex/s" if "bare+compile" in res else ""
                line = (
                    f"{pair:14s} {prec:4s} {obj:15s} kdgrid {C.median(res['kdgrid']):7.0f} ex/s  bare "
                    f"{C.median(res['bare']):7.0f} ex/s  ratio {ratio:.3f} [{lo:.3f}..{hi:.3f}] "
                    f"{'met' if ratio >= 0.95 else 'NOT met'}; GPU util {util}{comp}; peak {mem:.0f} MiB"
                )
                summary.append(line)
                print("   " + line, flush=True)
        del teacher, student0, data
        b.free()
    return [
        "kdgrid examples/s / bare-loop examples/s (whole passes A B A B, median [min..max]; target >= 0.95)",
        *summary,
    ]


def part_cache(b: Bench) -> list[str]:
    """The teacher recomputed every step under bf16 autocast vs cached (filled under the same autocast)."""
    from kdgrid.study.schema import Objective
    from kdgrid.train.activation_cache import activation_needs, cached_teacher_activations, disk_bytes, teacher_widths
    from kdgrid.train.objectives import DistillObjective
    from kdgrid.train.teacher_cache import cached_teacher_logits

    args, device = b.args, b.device
    prec = "bf16"
    amp = b.amp(prec)
    steps = min(args.steps, args.cache_steps)
    summary = []
    for pair in args.pairs.split(","):
        teacher, student0 = models(pair, device, b.smoke)
        tset = random_set(32 * steps, teacher.config.vocab_size, args.length)
        positions = __import__("numpy").arange(len(tset))
        source, n_steps = loader_source(tset, pin=False)
        dev = batches(1, teacher.config.vocab_size, args.length, device)
        n_ex = len(tset)
        t, s_ = teacher.config, student0.config
        for obj in args.objectives.split(","):
            spec = C.OBJECTIVES[obj]
            objective = DistillObjective(
                Objective.model_validate(spec),
                stage="joint",
                is_regression=False,
                n_teacher_layers=t.num_hidden_layers,
                n_student_layers=s_.num_hidden_layers,
                teacher_hidden=t.hidden_size,
                student_hidden=s_.hidden_size,
                teacher_heads=t.num_attention_heads,
                student_heads=s_.num_attention_heads,
                num_train_examples=n_ex,
            )
            needs = activation_needs(objective)
            tmp = Path(tempfile.mkdtemp(prefix="kdgrid-gpu-acts-"))
            try:
                stores: dict[str, tuple[Any, Any]] = {}
                fills = []
                for dtype in ("fp16", "bf16"):
                    with C.Timer() as fill:
                        acts = (
                            cached_teacher_activations(
                                teacher,
                                "gpu-bench",
                                tset,
                                positions,
                                needs,
                                tmp / dtype,
                                device,
                                0,
                                precision=prec,
                                autocast=amp,
                                budget=2**40,
                                dtype=dtype,
                            )
                            if needs
                            else None
                        )
                        table = cached_teacher_logits(
                            teacher, "gpu-bench", tset, positions, tmp / dtype, device, 0, precision=prec, autocast=amp
                        )
                    b.sync()
                    if needs and acts is None:
                        print(f"   {pair} {obj}: {dtype} storage refused (overflow): skipped", flush=True)
                        continue
                    stores[dtype] = (table, acts)
                    size = disk_bytes(tset.lengths, needs, teacher_widths(teacher)) if needs else 0
                    fills.append(f"{dtype} fill {fill.seconds:.2f} s, {size / 2**20:.0f} MiB")
                    if not needs:
                        break  # the logit table does not depend on the activations' storage type

                losses: dict[str | None, float] = {}

                def stage(cached: str | None) -> float:
                    table, acts = stores[cached] if cached else (None, None)
                    student = copy.deepcopy(student0)

                    def go() -> None:
                        rows = C.kdgrid_stage(
                            teacher,
                            student,
                            spec,
                            [],
                            dev,
                            seed=0,
                            source=source,
                            cached_logits=table,
                            activations=acts,
                            steps_per_epoch=n_steps,
                            device=device,
                            autocast=amp,
                        )
                        # Same seed, batches and dropout masks: the mean loss differs only by storage rounding.
                        losses[cached] = next(r["value"] for r in rows if r["split"] == "train" and r["name"] == "loss")

                    return b.timed(n_ex, go)

                variants = {"recomputed": lambda: stage(None)}
                for dtype in stores:
                    variants[f"cached-{dtype}" if needs else "cached"] = lambda d=dtype: stage(d)  # type: ignore[misc]
                res = C.alternate(variants, args.rounds, verbose=False)
                parts = [f"recomputed {C.median(res['recomputed']):.0f} ex/s"]
                for name in list(variants)[1:]:
                    r, lo, hi = C.paired_ratio(res[name], res["recomputed"])
                    key = name.removeprefix("cached-") if needs else "fp16"
                    rel = abs(losses[key] - losses[None]) / abs(losses[None])
                    parts.append(
                        f"{name} {C.median(res[name]):.0f} ex/s, ratio {r:.3f} [{lo:.3f}..{hi:.3f}], "
                        f"mean loss rel. diff {rel:.1e}"
                    )
                line = f"{pair:14s} {prec} {obj:15s} " + "; ".join(parts) + " (" + "; ".join(fills) + ")"
                summary.append(line)
                print("   " + line, flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        del teacher, student0
        b.free()
    return [
        "teacher cached / teacher recomputed every step, both under bf16 autocast, kdgrid's loader "
        f"({steps} steps of 32 rows; cache filled before the timed passes; median [min..max])",
        *summary,
    ]


def part_pin(b: Bench) -> list[str]:
    """kdgrid's loader with pinned vs pageable batches."""
    args, device = b.args, b.device
    pair = args.pairs.split(",")[0]
    teacher, student0 = models(pair, device, b.smoke)
    from kdgrid.train.teacher_cache import cached_teacher_logits

    tset = random_set(32 * args.steps, teacher.config.vocab_size, args.length, seed=1)
    amp = b.amp("bf16")
    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-gpu-pin-"))
    try:
        table = cached_teacher_logits(
            teacher,
            "gpu-pin",
            tset,
            __import__("numpy").arange(len(tset)),
            tmp,
            device,
            0,
            precision="bf16",
            autocast=amp,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dev = batches(1, teacher.config.vocab_size, args.length, device)
    spec = C.OBJECTIVES["vanilla-kd"]

    def stage(pin: bool) -> float:
        source, n_steps = loader_source(tset, pin)
        student = copy.deepcopy(student0)
        return b.timed(
            len(tset),
            lambda: C.kdgrid_stage(
                teacher,
                student,
                spec,
                [],
                dev,
                seed=0,
                source=source,
                cached_logits=table,
                steps_per_epoch=n_steps,
                device=device,
                autocast=amp,
            ),
        )

    res = C.alternate({"pageable": lambda: stage(False), "pinned": lambda: stage(True)}, args.rounds, verbose=False)
    r, lo, hi = C.paired_ratio(res["pinned"], res["pageable"])
    line = (
        f"{pair:14s} bf16 vanilla-kd (cached logits) pageable {C.median(res['pageable']):.0f} ex/s, pinned "
        f"{C.median(res['pinned']):.0f} ex/s, ratio pinned / pageable {r:.3f} [{lo:.3f}..{hi:.3f}]"
    )
    print("   " + line, flush=True)
    del teacher, student0
    b.free()
    return ["kdgrid loader: pin_memory=True / pageable batches (make_loader, non_blocking copies in the loop)", line]


def slot_worker(args: argparse.Namespace) -> None:
    """One process of the slots part: warm up, say READY, wait for GO on stdin, run, print its times."""
    import torch

    b = Bench(args)
    if b.smoke:
        C.set_threads(1)
    teacher, student0 = models(args.slot_pair, b.device, b.smoke)
    data = batches(args.slot_steps, teacher.config.vocab_size, args.length, b.device)
    spec = C.OBJECTIVES[args.slot_objective]
    amp = b.amp("bf16")
    C.kdgrid_stage(
        teacher,
        copy.deepcopy(student0),
        spec,
        data[: max(2, len(data) // 10)],
        data[:1],
        seed=0,
        device=b.device,
        autocast=amp,
    )
    b.sync()
    print("READY", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    C.kdgrid_stage(teacher, copy.deepcopy(student0), spec, data, data[:1], seed=0, device=b.device, autocast=amp)
    b.sync()
    t1 = time.time()
    mem = torch.cuda.max_memory_allocated(b.device) / 2**20 if b.device.type == "cuda" else float("nan")
    print("JSON " + json.dumps({"start": t0, "end": t1, "examples": 32 * len(data), "peak_mib": mem}), flush=True)


def part_slots(b: Bench) -> list[str]:
    """1, 2, 4 processes sharing the device, started together; aggregate examples/s vs one process."""
    args = b.args
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--slot-worker",
        "--slot-pair",
        args.slot_pair,
        "--slot-objective",
        args.slot_objective,
        "--slot-steps",
        str(args.slot_steps),
        "--length",
        str(args.length),
    ] + (["--cpu-smoke"] if b.smoke else [])
    rates: dict[int, float] = {}
    lines = []
    for k in [int(x) for x in args.slots.split(",")]:
        procs = [subprocess.Popen(base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        try:
            for p in procs:  # every process loaded and warmed up before any is timed
                assert p.stdout is not None
                for line in p.stdout:
                    if line.startswith("READY"):
                        break
                else:
                    raise SystemExit(f"slot worker failed (exit {p.wait()})")
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("GO\n")
                p.stdin.flush()
            got = []
            for p in procs:
                out, _ = p.communicate(timeout=300)
                got.append(json.loads(next(x for x in out.splitlines() if x.startswith("JSON "))[5:]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        span = max(g["end"] for g in got) - min(g["start"] for g in got)
        rates[k] = sum(g["examples"] for g in got) / span
        each = ", ".join(f"{g['examples'] / (g['end'] - g['start']):.0f}" for g in got)
        line = (
            f"{k} process(es): aggregate {rates[k]:.0f} ex/s, ratio to one {rates[k] / rates[min(rates)]:.2f} "
            f"(each {each} ex/s; peak {max(g['peak_mib'] for g in got):.0f} MiB a process)"
        )
        lines.append(line)
        print("   " + line, flush=True)
    return [
        f"slots per device: {args.slot_pair} {args.slot_objective} bf16, {args.slot_steps} steps a process, "
        "started together",
        *lines,
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="pairs,cache,pin,slots", help="which parts to run (default all four)")
    ap.add_argument("--steps", type=int, default=50, help="steps per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--pairs", default="minilm-l6->2,bert-base->4")
    ap.add_argument("--objectives", default=",".join(C.OBJECTIVES))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--compile", action="store_true", help="also time a bare loop with torch.compile-d models")
    ap.add_argument("--cache-steps", type=int, default=40, help="cache part: at most this many steps (disk size)")
    ap.add_argument("--slots", default="1,2,4", help="slots part: process counts sharing the device")
    ap.add_argument("--slot-pair", default="minilm-l6->2")
    ap.add_argument("--slot-objective", default="vanilla-kd")
    ap.add_argument("--slot-steps", type=int, default=300, help="slots part: steps per process")
    ap.add_argument("--slot-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="start no further part after this many seconds (default 360: the call stays < 8 min)",
    )
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run everything on the CPU at toy sizes")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: skipped")
        return
    smoke = args.cpu_smoke
    if smoke:
        C.set_threads(1)
        args.steps, args.rounds, args.length = min(args.steps, 3), min(args.rounds, 1), min(args.length, 16)
        args.slot_steps, args.slots = min(args.slot_steps, 3), ",".join(args.slots.split(",")[:2])
    else:
        # What kdgrid's run_one sets for a CUDA device (configure_gpu).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.slot_worker:
        slot_worker(args)
        return
    b = Bench(args)
    name = "CPU smoke test" if smoke else torch.cuda.get_device_name(b.device)
    C.header(
        f"GPU path: kdgrid train_stage vs bare loop, cached teacher, pinned loader, slots ({name})",
        None,
        parts=args.parts,
        steps=args.steps,
        rounds=args.rounds,
        length=args.length,
        batch=32,
    )
    parts = {"pairs": part_pairs, "cache": part_cache, "pin": part_pin, "slots": part_slots}
    results = []
    t_all = time.perf_counter()
    for part in args.parts.split(","):
        if part not in parts:
            raise SystemExit(f"--parts: unknown part {part!r} (allowed: {', '.join(parts)})")
        spent = time.perf_counter() - t_all
        if spent > args.budget_s:  # a safety net for the one-call budget: what did not run says so
            print(f"-- {part}: skipped, {spent:.0f} s spent of the --budget-s {args.budget_s:.0f}", flush=True)
            results.append((part, 0.0, [f"skipped: time budget ({spent:.0f} s spent before it)"]))
            continue
        print(f"-- {part}", flush=True)
        with C.Timer() as timer:
            lines = parts[part](b)
        print(f"   ({part}: {timer.seconds:.0f} s)", flush=True)
        results.append((part, timer.seconds, lines))
    print(f"\nRESULT ({time.perf_counter() - t_all:.0f} s in all)")
    for part, seconds, lines in results:
        print(f"   [{part}, {seconds:.0f} s] {lines[0]}")
        for line in lines[1:]:
            print(f"      {line}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
