"""Chaos and scaling of the local worker pool, through the real CLI on a tiny BERT.

1. chaos: a 20-run grid under ``kdgrid run --workers 2 --retries 10`` while this script kill -9s,
   at random moments, a busy worker or the coordinator itself (then starts ``kdgrid run`` again),
   until the grid is complete. It then checks the store against the run directories and prints
   how many kills were survived, how many finished results were lost (missing from the store, or
   computed again after they had finished) and how many were duplicated (a run stored twice,
   or a metric row twice).
2. speed: wall time of ``kdgrid run`` with 2 workers vs 1 on a small grid (teacher cached
   beforehand, fresh store each time, alternated, medians), and the ratio.

    python bench/chaos.py                 # both
    python bench/chaos.py --only chaos --kills 12 --seed 1
    python bench/chaos.py --only speed --repeats 3

A tiny random BERT (tests/conftest.py) and a synthetic CoLA folder: no data or network needed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import REPO, Timer, alternate, header, median, paired_ratio

sys.path.insert(0, str(REPO / "tests"))
from conftest import build_tiny_model_dir, write_cola_dir  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("KDGRID_FAULT", None)


def write_study(root: Path, model: Path, data: Path, seeds: int, temperatures: list[float]) -> Path:
    study = root / "study.yaml"
    study.write_text(f"""
name: chaos
tasks: [cola]
seeds: {seeds}
teacher: {{model: {model}, finetune: {{epochs: 1, batch_size: 8}}}}
student: {{layers: 2}}
data: {{dir: {data}, max_seq_length: 32}}
train: {{epochs: 2, batch_size: 8, lr: 1.0e-3}}
grid:
  objective.prediction.temperature: {temperatures}
""")
    return study


def kdgrid_run(root: Path, study: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kdgrid", "run", str(study), *args], cwd=root, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def in_flight(runs: Path) -> dict[str, int]:
    out = {}
    for p in runs.glob("*/job.json"):
        try:
            out[p.parent.name] = int(json.loads(p.read_text())["job_id"])
        except (OSError, ValueError, KeyError):
            pass
    return out


def finished(runs: Path) -> dict[str, int]:
    out = {}
    for p in runs.glob("*/result.json"):
        try:
            if json.loads(p.read_text())["status"] == "done":
                out[p.parent.name] = p.stat().st_mtime_ns
        except (OSError, ValueError, KeyError):
            pass
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def chaos(root: Path, model: Path, data: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    study = write_study(root, model, data, seeds=5, temperatures=[1.0, 2.0, 4.0, 8.0])  # 20 runs
    runs = root / ".kdgrid" / "runs"
    header("chaos: kill -9 of workers and the coordinator during a 20-run grid",
           kills=kills, seed=seed, command="kdgrid run --workers 2 --retries 10")
    seen_done: dict[str, int] = {}  # run_id -> mtime of its result when first seen finished
    log: list[str] = []
    orphans: list[int] = []
    done_kills = Counter[str]()
    coord = kdgrid_run(root, study, "--workers", "2", "--retries", "10")
    t0 = time.monotonic()
    while True:
        if coord.poll() is not None:
            if coord.returncode == 0:
                break
            raise SystemExit(f"kdgrid run exited with {coord.returncode}: {coord.stdout.read() if coord.stdout else ''}")
        if sum(done_kills.values()) >= kills:
            time.sleep(0.2)
            continue
        time.sleep(rng.uniform(1.0, 4.0))
        if coord.poll() is not None:
            continue
        for rid, m in finished(runs).items():
            seen_done.setdefault(rid, m)
        busy = {rid: pid for rid, pid in in_flight(runs).items() if alive(pid) and parent_of(pid) == coord.pid}
        if busy and rng.random() < 0.7:
            rid, pid = rng.choice(sorted(busy.items()))
            os.kill(pid, signal.SIGKILL)
            done_kills["worker"] += 1
            log.append(f"{time.monotonic() - t0:6.1f}s kill -9 worker {pid} (run {rid})")
        else:
            workers = [pid for pid in in_flight(runs).values() if parent_of(pid) == coord.pid]
            os.kill(coord.pid, signal.SIGKILL)
            coord.wait()
            done_kills["coordinator"] += 1
            log.append(f"{time.monotonic() - t0:6.1f}s kill -9 coordinator {coord.pid} ({len(workers)} busy worker(s))")
            time.sleep(0.5)
            orphans += [pid for pid in workers if alive(pid)]
            coord = kdgrid_run(root, study, "--workers", "2", "--retries", "10")
    wall = time.monotonic() - t0
    for line in log:
        print("   " + line)
    for rid, m in finished(runs).items():
        seen_done.setdefault(rid, m)

    import duckdb

    con = duckdb.connect(str(root / "kdgrid.duckdb"), read_only=True)
    try:
        statuses = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        n_rows, n_ids = con.execute("SELECT count(*), count(DISTINCT run_id) FROM runs").fetchone()
        dup_metrics = con.execute("""SELECT count(*) FROM (SELECT run_id, stage, epoch, split, name, count(*) c
                                     FROM metrics GROUP BY ALL HAVING c > 1)""").fetchone()[0]
        per_run = dict(con.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
        attempts = dict(con.execute("SELECT run_id, attempt FROM runs").fetchall())
        stored_done = {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'done'").fetchall()}
    finally:
        con.close()
    final = finished(runs)
    lost_missing = sorted(rid for rid in seen_done if rid not in stored_done)
    lost_redone = sorted(rid for rid, m in seen_done.items() if final.get(rid) != m)
    mismatched = sorted(rid for rid in stored_done
                        if per_run.get(rid) != len(json.loads((runs / rid / "result.json").read_text())["metrics"]))
    duplicated = (n_rows - n_ids) + dup_metrics + len(mismatched)
    lost = len(set(lost_missing) | set(lost_redone))
    survived = sum(done_kills.values()) if statuses == {"done": 20} and not lost and not duplicated and not orphans else 0
    print(f"   grid: {n_ids} runs, statuses {statuses}, {wall:.0f} s wall, attempts per run: "
          f"{dict(sorted(Counter(attempts.values()).items()))}")
    print(f"   kills: {done_kills['worker']} worker(s) + {done_kills['coordinator']} coordinator(s) = "
          f"{sum(done_kills.values())}; survived {survived}")
    print(f"   finished results lost: {lost} (missing from the store: {len(lost_missing)}, computed again after "
          f"finishing: {len(lost_redone)}); duplicated: {duplicated} (run rows {n_rows - n_ids}, metric rows "
          f"{dup_metrics}, store vs result.json mismatches {len(mismatched)}); workers outliving their "
          f"coordinator: {len(orphans)}")
    print(f"   RESULT lost/duplicated = {lost}/{duplicated} (goal 0/0)")


def speed(root: Path, model: Path, data: Path, repeats: int) -> None:
    study = write_study(root, model, data, seeds=4, temperatures=[1.0, 2.0, 4.0])  # 12 runs
    header("speed: kdgrid run --workers 2 vs --workers 1, 12 tiny runs (teacher cached), fresh store each",
           repeats=repeats, omp_threads=ENV["OMP_NUM_THREADS"], cores=os.cpu_count())
    warm = root / "warm"
    warm.mkdir()
    proc = kdgrid_run(warm, study, "--workers", "1", "--max-runs", "1")  # trains and caches the teacher
    proc.communicate()
    cache = warm / ".kdgrid" / "cache"
    count = Counter[str]()
    spans: dict[str, list[float]] = {"1": [], "2": []}

    def timed(workers: int) -> float:
        count[str(workers)] += 1
        d = root / f"w{workers}-{count[str(workers)]}"
        shutil.copytree(cache, d / ".kdgrid" / "cache")
        with Timer() as t:
            out, _ = kdgrid_run(d, study, "--workers", str(workers)).communicate()
        if "12 run(s) done now" not in out:
            raise SystemExit(f"unexpected output: {out}")
        import duckdb

        con = duckdb.connect(str(d / "kdgrid.duckdb"), read_only=True)
        span = con.execute("SELECT epoch(max(finished) - min(started)) FROM runs").fetchone()[0]
        con.close()
        spans[str(workers)].append(float(span))
        return t.seconds

    res = alternate({"1 worker": lambda: timed(1), "2 workers": lambda: timed(2)}, repeats=repeats)
    spans = {k: v[-repeats:] for k, v in spans.items()}  # the warm-up round is not counted
    one, two = median(res["1 worker"]), median(res["2 workers"])
    r, lo, hi = paired_ratio(res["1 worker"], res["2 workers"])
    rs, slo, shi = paired_ratio(spans["1"], spans["2"])
    print(f"   wall of 'kdgrid run' (median): 1 worker {one:.1f} s, 2 workers {two:.1f} s "
          "(includes CLI start, worker start-up with the torch import, the runs)")
    print(f"   first run start to last run end (median): 1 worker {median(spans['1']):.1f} s, "
          f"2 workers {median(spans['2']):.1f} s")
    print(f"   RESULT speed-up 2 workers vs 1: wall {r:.2f}x (paired rounds {lo:.2f}-{hi:.2f}), runs only "
          f"{rs:.2f}x ({slo:.2f}-{shi:.2f}); SHARED 2-core machine: other jobs ran at the same time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["chaos", "speed"])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdgrid-chaos-"))
    try:
        model = build_tiny_model_dir(root / "tiny")
        data = write_cola_dir(root / "glue", n_train=48, n_dev=16)
        if args.only in (None, "chaos"):
            (root / "chaos").mkdir()
            chaos(root / "chaos", model, data, args.kills, args.seed)
        if args.only in (None, "speed"):
            (root / "speed").mkdir()
            speed(root / "speed", model, data, args.repeats)
    finally:
        if args.keep:
            print(f"   files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
