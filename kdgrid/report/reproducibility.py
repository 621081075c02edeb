"""The Reproducibility section: how to rerun a study, and how to check that the same code and data were used.

Everything comes from a :class:`kdgrid.store.queries.Reproducibility` read from the store, never from
the data directory or the models: a report must describe the runs as they were, not the files as they
are now. Markdown, HTML and JSON get the full section; the terminal and LaTeX a short one (facts and
commands), since library tables and a whole study file would bury the statistics there.
"""

from __future__ import annotations

import hashlib
import shlex
from collections import Counter
from datetime import datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdgrid.report.tables import MISSING, CodeBlock, DisplayTable, Section, fmt_num

if TYPE_CHECKING:
    from kdgrid.store.queries import DataFile, Reproducibility

KEY = "reproducibility"
TITLE = "Reproducibility"
NOT_RECORDED = "not recorded"
_LIBRARY_ORDER = ("python", "torch", "transformers", "datasets", "numpy")


# --------------------------------------------------------------------------- commands


def shown_path(path: str, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when it lies below it, else as stored.

    A relative stored path is kept: it is relative to wherever ``kdgrid run`` ran, which the store
    does not know. Purely lexical (no filesystem access), so the report never depends on what is on disk.
    """
    p = PurePath(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(cwd))
    except ValueError:
        return path


def rerun_commands(info: Reproducibility, cwd: Path) -> dict[str, str]:
    """The shell lines to check the study file, rerun the study and rebuild this report."""
    study = shlex.quote(shown_path(info.path, cwd)) if info.path else "STUDY.yaml"
    db = shlex.quote(shown_path(info.db, cwd))
    out = {
        "run": f"kdgrid run {study} --db {db}",
        "report": f"kdgrid report --study {shlex.quote(info.study)} --db {db}",
    }
    if info.path and info.sha256:
        out = {"check": f"sha256sum {study}  # expect {info.sha256}", **out}
    return out


def text_matches_sha(info: Reproducibility) -> bool | None:
    """Whether the stored text hashes to the stored sha256 (as ``kdgrid run`` computes it), so the
    file shown in the report is the file the hash names; None when either is missing."""
    if info.text is None or not info.sha256:
        return None
    return hashlib.sha256(info.text.encode()).hexdigest() == info.sha256


# --------------------------------------------------------------------------- facts


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    # Thresholds on the rounded value, so 59.97 s reads "1 min 00 s", never "60.0 s".
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    if round(seconds) < 3600:
        m, sec = divmod(round(seconds), 60)
        return f"{m} min {sec:02d} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def _fmt_time(t: datetime | None) -> str:
    # kdgrid stores run times in UTC without a zone (kdgrid.execute.job.now).
    return MISSING if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _status_text(info: Reproducibility) -> str:
    parts = ", ".join(f"{n} {status}" for status, n in info.status_counts.items())
    return f"{info.runs}: {parts}" if parts else "0"


def _code_text(info: Reproducibility) -> str:
    if not info.code:
        return NOT_RECORDED
    return "; ".join(
        f"kdgrid {c.version or NOT_RECORDED} @ {c.commit or 'commit ' + NOT_RECORDED} ({c.runs} runs)"
        for c in info.code
    )


def _sha_text(info: Reproducibility) -> str:
    if not info.sha256:
        return NOT_RECORDED
    match = text_matches_sha(info)
    if match is None:
        return info.sha256
    return info.sha256 + (" (matches the stored study text)" if match else " (does NOT match the stored study text)")


def _data_text(info: Reproducibility) -> str:
    if not info.data_recorded:
        return f"{NOT_RECORDED} (the store predates data hashes)"
    missing = sum(d.runs for d in info.data if d.hash is None)
    if missing == 0:
        return f"hashed for all {info.done} done runs"
    return f"{NOT_RECORDED} for {missing} of {info.done} done runs"


def _facts(info: Reproducibility, cwd: Path) -> DisplayTable:
    wall = (
        (f"{_fmt_time(info.first_started)} to {_fmt_time(info.last_finished)} UTC ({fmt_duration(info.wall_s)})")
        if info.wall_s is not None
        else MISSING
    )
    # Labels stay short so a 64-character hash still fits beside them on an 80-column terminal.
    rows = [
        ("Study", info.study),
        ("Study file", shown_path(info.path, cwd) if info.path else NOT_RECORDED),
        ("sha256", _sha_text(info)),
        ("Store", shown_path(info.db, cwd)),
        ("Code", _code_text(info)),
        ("Runs", _status_text(info)),
        ("Wall time", wall),
        (
            "Run time",
            f"{fmt_duration(info.run_time_s)} (sum of the runs' durations)" if info.run_time_s is not None else MISSING,
        ),
        ("Data files", _data_text(info)),
    ]
    remote = remote_code_trusted(info.text)
    if remote:
        rows.append(("Remote code", f"trusted ({', '.join(remote)}): the teacher model's own Python code ran"))
    frame = _frame(["Item", "Value"], rows)
    caption = "This study's runs only. Wall time: first start to last finish; run time: the sum of the runs' durations."
    return DisplayTable("reproducibility-facts", caption, frame, left=("Item", "Value"))


def remote_code_trusted(text: str | None) -> list[str]:
    """Where the study file sets ``teacher.trust_remote_code: true`` (base, grid or variants); [] when nowhere.

    Read from the stored study text, as every fact here comes from the store.
    """
    from kdgrid.errors import StudyError
    from kdgrid.study.loader import parse_yaml

    if not text or "trust_remote_code" not in text:
        return []
    try:
        data, _ = parse_yaml(text, Path("<stored study>"))
    except StudyError:
        return []
    if not isinstance(data, dict):
        return []
    where: list[str] = []
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and teacher.get("trust_remote_code") is True:
        where.append("teacher.trust_remote_code")
    grid = data.get("grid")
    if isinstance(grid, dict) and True in (grid.get("teacher.trust_remote_code") or []):
        where.append("grid")
    variants = data.get("variants")
    for group, levels in variants.items() if isinstance(variants, dict) else []:
        for level, overrides in levels.items() if isinstance(levels, dict) else []:
            if isinstance(overrides, dict) and True in (
                overrides.get("trust_remote_code"),
                overrides.get("teacher.trust_remote_code"),
            ):
                where.append(f"variants.{group}.{level}")
    return where


# --------------------------------------------------------------------------- tables


def _frame(columns: list[str], rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=columns, dtype=object)


def _library_names(info: Reproducibility) -> list[str]:
    names = {k for s in info.libraries for k in s.versions}
    return [n for n in _LIBRARY_ORDER if n in names] + sorted(names - set(_LIBRARY_ORDER))


def _libraries_table(info: Reproducibility) -> DisplayTable | None:
    if not info.libraries:
        return None
    names = _library_names(info)
    if not names:  # no run recorded its versions (runs from before kdgrid did)
        return DisplayTable(
            "reproducibility-libraries",
            "Library versions of the done runs.",
            _frame(["Libraries", "Runs"], [(NOT_RECORDED, s.runs) for s in info.libraries]),
            left=("Libraries",),
        )
    rows: list[tuple[Any, ...]] = [
        (*(s.versions.get(n, NOT_RECORDED if not s.versions else MISSING) for n in names), s.runs)
        for s in info.libraries
    ]
    caption = "Library versions of the done runs: one row per distinct set, with how many runs used it."
    return DisplayTable("reproducibility-libraries", caption, _frame([*names, "Runs"], rows), left=tuple(names))


def _machines_table(info: Reproducibility) -> DisplayTable | None:
    if not info.machines:
        return None
    rows = [(m.host or NOT_RECORDED, m.device or NOT_RECORDED, m.runs) for m in info.machines]
    return DisplayTable(
        "reproducibility-machines",
        "Hosts and devices the done runs ran on.",
        _frame(["Host", "Device", "Runs"], rows),
        left=("Host", "Device"),
    )


def _data_row(d: DataFile) -> tuple[Any, ...]:
    return (d.task, d.split or MISSING, d.hash or NOT_RECORDED, d.runs)


def _data_table(info: Reproducibility) -> DisplayTable | None:
    if not info.data:
        return None
    caption = (
        "Data files the done runs read, as each run fingerprinted them (sha256 of the file, or the "
        "hub dataset/config/split): the same task and split must show one hash."
    )
    return DisplayTable(
        "reproducibility-data",
        caption,
        _frame(["Task", "Split", "Fingerprint", "Runs"], [_data_row(d) for d in info.data]),
        left=("Task", "Split", "Fingerprint"),
    )


def _teachers_table(info: Reproducibility) -> DisplayTable | None:
    if not info.teachers:
        return None
    rows = [
        (
            t.task,
            t.model,
            MISSING if t.seed is None else t.seed,
            t.key,
            fmt_num(t.majority, 3),
            "yes" if t.flagged else "no",
            t.runs,
        )
        for t in info.teachers
    ]
    caption = (
        "Fine-tuned teachers of the done runs (cache key = hash of model, fine-tune settings and data); "
        "majority = the majority-class score a teacher must beat; flagged = it does not."
    )
    cols = ["Task", "Model", "Fine-tune seed", "Cache key", "Majority", "Flagged", "Runs"]
    return DisplayTable(
        "reproducibility-teachers", caption, _frame(cols, rows), left=("Task", "Model", "Cache key", "Flagged")
    )


def _plugins_table(info: Reproducibility) -> DisplayTable | None:
    if not info.plugins:
        return None
    rows = [(p.key, p.package, p.version, p.settings_sha, p.runs) for p in info.plugins]
    caption = (
        "Plug-ins the done runs used (docs/plugins.md): install the same package versions to rerun; "
        "a run id covers each plug-in's package, version and settings hash."
    )
    return DisplayTable(
        "reproducibility-plugins",
        caption,
        _frame(["Plug-in", "Package", "Version", "Settings hash", "Runs"], rows),
        left=("Plug-in", "Package", "Version", "Settings hash"),
    )


# --------------------------------------------------------------------------- notes

_RERUN_NOTE = (
    "Run the commands from the folder this report was made in. On a machine that already holds this store, "
    "'kdgrid run' only completes missing runs; to recompute everything, give --db a new file "
    "(its .kdgrid/ caches are then new too)."
)
_COMMIT_NOTE = "A commit does not show uncommitted changes to kdgrid; the study file's sha256 covers its text exactly."
_SHORT_NOTE = (
    "Library versions, machines, data fingerprints, teachers and the study file: "
    "report.md, report.html and report.json."
)
_TEACHER_NOTE = (
    "Teacher dev scores are in the Sensitivity section; teachers are matched to runs by task, model and "
    "fine-tune seed (runs do not store the cache key)."
)


def _mixture_notes(info: Reproducibility) -> list[str]:
    notes = []
    if len(info.code) > 1:
        notes.append(f"The runs used {len(info.code)} kdgrid versions or commits: the numbers may mix code changes.")
    recorded_sets = [s for s in info.libraries if s.versions]
    if len(recorded_sets) > 1:
        notes.append(f"The runs used {len(recorded_sets)} library version sets: the numbers may mix library changes.")
    split_hashes = Counter((d.task, d.split) for d in info.data if d.split is not None)
    mixed = [f"{t} {s}" for (t, s), n in split_hashes.items() if n > 1]
    if mixed:
        notes.append("Runs read different files for " + ", ".join(mixed) + ": their numbers are not comparable.")
    return notes


def _teacher_notes(info: Reproducibility) -> list[str]:
    if not info.teachers:
        return [f"Teachers: {NOT_RECORDED} for this study's runs."]
    notes = [_TEACHER_NOTE]
    groups = Counter((t.task, t.model, t.seed) for t in info.teachers)
    ambiguous = [f"{task} ({model}, seed {seed})" for (task, model, seed), n in groups.items() if n > 1]
    if ambiguous:
        notes.append(
            "Several cached teachers match "
            + ", ".join(ambiguous)
            + " (other fine-tune settings or data): the store cannot tell which one each run used."
        )
    return notes


def _notes(info: Reproducibility, *, full: bool) -> tuple[str, ...]:
    notes = [_RERUN_NOTE, _COMMIT_NOTE]
    if not full:
        return (*notes, _SHORT_NOTE)
    if any((d.hash or "").startswith("hub:") for d in info.data):
        notes.append("A 'hub:' fingerprint names a Hugging Face dataset split without a revision.")
    return (*notes, *_mixture_notes(info), *_teacher_notes(info))


# --------------------------------------------------------------------------- section and json


def _commands_block(info: Reproducibility, cwd: Path) -> CodeBlock:
    return CodeBlock(
        "Check the study file, rerun the study, rebuild this report",
        "\n".join(rerun_commands(info, cwd).values()),
        lang="bash",
    )


def _study_block(info: Reproducibility, cwd: Path) -> CodeBlock | None:
    if info.text is None:
        return None
    where = shown_path(info.path, cwd) if info.path else info.study
    return CodeBlock(
        f"Study file {where} as stored (sha256 {(info.sha256 or NOT_RECORDED)[:12]})",
        info.text,
        lang="yaml",
        collapsed=True,
    )


def reproducibility_section(info: Reproducibility, *, full: bool = True, cwd: Path | None = None) -> Section:
    """The section: facts, commands, then (``full``) library, machine, data and teacher tables and the study file."""
    cwd = Path.cwd() if cwd is None else cwd
    tables = [_facts(info, cwd)]
    code = [_commands_block(info, cwd)]
    if full:
        tables += [
            t
            for t in (
                _libraries_table(info),
                _plugins_table(info),
                _machines_table(info),
                _data_table(info),
                _teachers_table(info),
            )
            if t is not None
        ]
        study = _study_block(info, cwd)
        code += [study] if study is not None else []
    return Section(KEY, TITLE, tables=tuple(tables), notes=_notes(info, full=full), code=tuple(code))


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def reproducibility_json(info: Reproducibility, *, cwd: Path | None = None) -> dict[str, Any]:
    """The section for ``report.json``: every fact unrounded, timestamps ISO 8601 (UTC), null when missing."""
    cwd = Path.cwd() if cwd is None else cwd
    return {
        "study": info.study,
        "store": info.db,
        "study_file": {
            "path": info.path,
            "sha256": info.sha256,
            "sha256_matches_text": text_matches_sha(info),
            "text": info.text,
        },
        "commands": rerun_commands(info, cwd),
        "runs": {"total": info.runs, "by_status": dict(info.status_counts)},
        "time": {
            "first_started_utc": _iso(info.first_started),
            "last_finished_utc": _iso(info.last_finished),
            "wall_s": info.wall_s,
            "run_time_s": info.run_time_s,
        },
        "kdgrid": [{"version": c.version, "commit": c.commit, "runs": c.runs} for c in info.code],
        "libraries": [{"versions": dict(s.versions), "runs": s.runs} for s in info.libraries],
        "machines": [{"host": m.host, "device": m.device, "runs": m.runs} for m in info.machines],
        "data": {
            "recorded": info.data_recorded,
            "files": [
                {"task": d.task, "split": d.split, "hash": d.hash, "runs": d.runs}
                for d in info.data
                if d.hash is not None
            ],
            "not_recorded": [{"task": d.task, "runs": d.runs} for d in info.data if d.hash is None],
        },
        "plugins": [
            {"key": p.key, "package": p.package, "version": p.version, "settings_sha": p.settings_sha, "runs": p.runs}
            for p in info.plugins
        ],
        "teachers": [
            {
                "key": t.key,
                "task": t.task,
                "model": t.model,
                "seed": t.seed,
                "majority": t.majority,
                "flagged": t.flagged,
                "runs": t.runs,
            }
            for t in info.teachers
        ],
    }
