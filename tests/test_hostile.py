"""Hostile and damaged input: study files that try to hang or crash kdgrid, damaged stores and run
directories, models that ship code. Each case ends in one clear line, or in only that run failing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_store_execute import FakeRunner, counts, go, grid_study

from kdgrid.errors import PlanError, RunFailed, StoreError, StudyError
from kdgrid.execute.rundir import (
    check_result,
    damaged_results,
    read_result,
    result_path,
    workdir_for,
    write_json_atomic,
)
from kdgrid.plan import expand, plan_size
from kdgrid.store import open_store
from kdgrid.study import load_study
from kdgrid.study.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, parse_yaml
from kdgrid.study.schema import Study

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
HEAD = "name: hostile\ntasks: [cola]\n"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def study_error(path: Path) -> str:
    with pytest.raises(StudyError) as info:
        load_study(path)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    return msg


def alias_bomb() -> str:
    lines = [HEAD.rstrip(), "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]  # 10^10 values
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ study files


def test_duplicate_top_level_key_names_both_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        HEAD + "grid:\n  objective.intermediate.alpha: [0.0, 0.5]\nseeds: 3\ngrid:\n  data.fraction: [0.5, 1.0]\n",
    )
    assert study_error(p) == f"{p}:6: grid: duplicate key 'grid' (first at line 3); YAML would keep only the last one"


def test_duplicate_key_at_depth_and_in_flow_style(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "train:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 2.0e-4\n")
    assert study_error(p) == f"{p}:6: train.lr: duplicate key 'lr' (first at line 4); YAML would keep only the last one"
    p = write(tmp_path, HEAD + "teacher: {model: minilm-l6, finetune: {epochs: 1, epochs: 2}}\n")
    assert (
        study_error(p)
        == f"{p}:3: teacher.finetune.epochs: duplicate key 'epochs' (first at line 3); YAML would keep only the last one"
    )


def test_keys_equal_after_yaml_resolution_are_duplicates(tmp_path: Path) -> None:
    # YAML 1.1 reads both 'yes' and 'true' as the boolean true: one key written twice.
    p = write(tmp_path, HEAD + "analysis:\n  baseline: {yes: 1, true: 2}\n")
    assert "duplicate key 'true' (first at line 4)" in study_error(p)


def test_merge_keys_override_without_being_duplicates(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        HEAD
        + "train: &t {epochs: 2, lr: 1.0e-4}\nteacher:\n  finetune:\n    <<: {epochs: 1, lr: 3.0e-5}\n    lr: 5.0e-5\n",
    )
    loaded = load_study(p)
    assert loaded.study.teacher.finetune.lr == 5.0e-5 and loaded.study.teacher.finetune.epochs == 1


def test_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    p = write(tmp_path, alias_bomb())
    assert study_error(p) == (
        f"{p}:7: a4: expands to more than {MAX_NODES} values through YAML aliases "
        "(&anchor / *alias); write the values out or use fewer aliases"
    )


def test_many_small_aliases_add_up(tmp_path: Path) -> None:
    # No single key is over the limit, but all of them together are.
    keys = "\n".join(f"k{i}: *big" for i in range(30))
    p = write(tmp_path, HEAD + "description: &big [" + ", ".join(["x"] * 1000) + "]\n" + keys + "\n")
    assert "the file expands to more than" in study_error(p)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "train: &tr {epochs: 2, lr: 1.0e-4}\nteacher:\n  finetune: *tr\n")
    assert load_study(p).study.teacher.finetune.epochs == 2


def test_recursive_alias(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "grid: &g\n  x: *g\n")
    assert study_error(p) == f"{p}:3: grid: a YAML alias refers to the block that contains it (a recursive alias)"


@pytest.mark.parametrize(
    "body",
    [
        "grid:\n  x: " + "[" * 5000 + "]" * 5000,
        "description: " + "{a: " * 3000 + "1" + "}" * 3000,
        "analysis:\n  baseline:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(60)) + "  " * 62 + "v",
    ],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path, body: str) -> None:
    msg = study_error(write(tmp_path, HEAD + body + "\n"))
    assert msg.endswith(f"nested more than {MAX_DEPTH} levels deep (the limit for a study file)")


def test_deep_nesting_through_aliases(tmp_path: Path) -> None:
    # Each anchor nests the previous one 30 levels deeper: shallow as written, deep once expanded.
    lines = [HEAD.rstrip(), "description: &d0 x"]
    for i in range(1, 5):
        lines.append(f"k{i}: &d{i} " + "[" * 30 + f"*d{i - 1}" + "]" * 30)
    msg = study_error(write(tmp_path, "\n".join(lines) + "\n"))
    assert msg.endswith(f"nested more than {MAX_DEPTH} levels deep once YAML aliases are expanded")


def test_file_size_is_bounded(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "description: '" + "x" * MAX_FILE_BYTES + "'\n")
    assert study_error(p) == f"{p}:1: (file): larger than {MAX_FILE_BYTES} bytes (64 KiB), the limit for a study file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_limit() -> None:
    assert study_error(Path("/dev/zero")).startswith("/dev/zero:1: (file): larger than")


def test_huge_integer_names_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "seeds: " + "9" * 6000 + "\n")
    assert study_error(p) == f"{p}:3: seeds: an integer of 6000 digits (at most 4000)"


def test_no_tag_constructs_an_object_or_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = write(tmp_path, HEAD + f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    assert study_error(p) == (
        f"{p}:3: not valid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    )
    assert not marker.exists()


def test_control_characters_in_keys_stay_on_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + '"bad\\nkey\\r": 1\n')
    assert study_error(p).startswith(f"{p}:3: bad\\nkey\\r: unknown key")


def test_long_lists_are_checked_in_linear_time(tmp_path: Path) -> None:
    # 'seeds' and 'tasks' duplicates were found with list.count (quadratic: minutes for a 64 KiB list).
    p = write(tmp_path, "name: x\ntasks: [" + ", ".join(["cola"] * 9000) + "]\n")
    assert study_error(p) == f"{p}:2: tasks: duplicate tasks ['cola']"


# ------------------------------------------------------------------ plan size


def test_plan_size_is_arithmetic_and_refused_before_expansion() -> None:
    study = Study.model_validate({"name": "x", "tasks": ["cola", "stsb"], "seeds": 100_000_000})
    assert plan_size(study).runs == 200_000_000
    with pytest.raises(PlanError) as info:
        expand(study)  # answers at once: counting never expands
    assert str(info.value) == (
        "seeds: the study plans 200000000 runs (2 tasks x 100000000 seeds), more than the "
        "limit of 10000; set plan_limit: N in the study or pass --plan-limit N if you mean it"
    )
    assert info.value.loc == ("seeds",)


def test_plan_limit_points_at_the_largest_factor_and_can_be_raised() -> None:
    data = {
        "name": "x",
        "tasks": ["cola"],
        "seeds": 2,
        "grid": {"objective.prediction.temperature": [1.0, 2.0, 3.0]},
        "variants": {"student": {"a": {"layers": 1}, "b": {"layers": 2}}},
    }
    study = Study.model_validate({**data, "plan_limit": 5})
    with pytest.raises(
        PlanError,
        match=r"the study plans 12 runs \(1 task x 3 objective.prediction.temperature x 2 student x 2 seeds\), more than the limit of 5",
    ) as info:
        expand(study)
    assert info.value.loc == ("grid", "objective.prediction.temperature")
    assert len(expand(study, plan_limit=12)) == 12
    assert len(expand(Study.model_validate({**data, "plan_limit": 12}))) == 12


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    seeds=st.integers(1, 3),
    tasks=st.lists(st.sampled_from(["cola", "stsb", "rte"]), min_size=1, max_size=3, unique=True),
    variant=st.integers(0, 2),
    exclude=st.booleans(),
)
def test_plan_size_matches_expansion(
    levels: list[int], seeds: int, tasks: list[str], variant: int, exclude: bool
) -> None:
    paths = ["objective.prediction.temperature", "data.max_seq_length", "train.lr"]
    grid = {
        path: [float(v + 1) if path != "data.max_seq_length" else 16 * (v + 1) for v in range(n)]
        for path, n in zip(paths, levels)
    }
    data: dict[str, Any] = {"name": "x", "tasks": tasks, "seeds": seeds, "grid": grid}
    if variant:
        data["variants"] = {"student": {f"v{i}": {"layers": i + 1} for i in range(variant)}}
    if exclude:
        data["exclude"] = [{"task": tasks[0], "seed": 0}]
    study = Study.model_validate(data)
    try:
        n = len(expand(study))
    except PlanError:  # everything excluded
        n = 0
    # Exact without filters; an upper bound with them (include/exclude only remove runs).
    assert plan_size(study).runs == n if not exclude else plan_size(study).runs >= n


# ------------------------------------------------------------------ property: any study round-trips or fails in one line

_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=8),
    st.sampled_from(["mse", "kl", "uniform", "learnable", "cola", "joint"]),
)
_blocks = {
    "teacher": st.fixed_dictionaries(
        {},
        optional={
            "model": st.just("minilm-l6"),
            "finetune": st.dictionaries(st.sampled_from(["epochs", "lr", "batch_size", "seed"]), _value, max_size=3),
        },
    ),
    "student": st.dictionaries(
        st.sampled_from(["layers", "heads", "init", "hidden_size", "bogus"]), _value, max_size=3
    ),
    "train": st.dictionaries(st.sampled_from(["epochs", "lr", "schedule", "batch_size"]), _value, max_size=3),
    "objective": st.fixed_dictionaries(
        {},
        optional={
            "prediction": st.dictionaries(st.sampled_from(["beta", "temperature"]), _value, max_size=2),
            "mapping": _value,
        },
    ),
    # Small or far over the limit: a plan of thousands of runs would only make the test slow.
    "seeds": st.one_of(
        st.integers(-2, 20),
        st.sampled_from([10**5, 10**9]),
        st.lists(st.integers(-1, 20), max_size=5),
        st.booleans(),
        st.text(max_size=3),
    ),
    "grid": st.dictionaries(
        st.sampled_from(["objective.prediction.temperature", "train.lr", "student.layers", "no.such.path", "seed"]),
        st.lists(_value, max_size=3),
        max_size=2,
    ),
    "plan_limit": st.one_of(st.integers(-1, 50), st.none(), st.booleans(), st.text(max_size=3)),
    "description": st.text(max_size=20),
}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    name=st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), st.text(max_size=5)),
    tasks=st.lists(st.sampled_from(["cola", "stsb", "sst2", "nope"]), max_size=3),
    extra=st.fixed_dictionaries({}, optional=_blocks),
)
def test_random_study_dicts_validate_or_fail_in_one_line(
    tmp_path: Path, name: str, tasks: list[str], extra: dict[str, Any]
) -> None:
    p = tmp_path / "random.yaml"
    data = {"name": name, "tasks": tasks, **extra}
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        loaded = load_study(p)
        expand(loaded.study)
    except StudyError as exc:
        assert str(exc).startswith(f"{p}") and "\n" not in str(exc)
    except PlanError as exc:
        assert "\n" not in str(exc)
    else:  # the file means exactly what the dict it was written from means
        event("valid study")
        assert loaded.study == Study.model_validate(data)


_pos = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False, allow_infinity=False)
_well_formed = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
        "tasks": st.lists(
            st.sampled_from(["cola", "sst2", "mrpc", "stsb", "rte"]), min_size=1, max_size=3, unique=True
        ),
    },
    optional={
        # Not YAML's Unicode line breaks: PyYAML dumps '\x85' in a single-quoted scalar and reads it back as a
        # space (yaml.safe_load(yaml.safe_dump({"d": "\x85"})) -> {'d': ' '}), a PyYAML round trip, not kdgrid's.
        "description": st.text(st.characters(exclude_characters="\x85\u2028\u2029"), max_size=30),
        "seeds": st.one_of(st.integers(1, 4), st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True)),
        "teacher": st.fixed_dictionaries(
            {},
            optional={
                "finetune": st.fixed_dictionaries(
                    {}, optional={"epochs": st.integers(1, 3), "lr": _pos, "seed": st.integers(0, 9)}
                )
            },
        ),
        "student": st.fixed_dictionaries(
            {}, optional={"layers": st.integers(1, 6), "init": st.sampled_from(["teacher_layers", "random"])}
        ),
        "train": st.fixed_dictionaries(
            {}, optional={"epochs": st.integers(1, 3), "lr": _pos, "batch_size": st.integers(1, 64)}
        ),
        "objective": st.fixed_dictionaries(
            {},
            optional={"prediction": st.fixed_dictionaries({}, optional={"beta": st.floats(0, 1), "temperature": _pos})},
        ),
        "grid": st.dictionaries(
            st.sampled_from(["objective.prediction.temperature", "train.lr", "data.fraction"]),
            st.lists(st.floats(0.05, 1.0), min_size=1, max_size=3, unique=True),
            max_size=2,
        ),
        "plan_limit": st.integers(1000, 10**6),
    },
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=_well_formed)
def test_well_formed_study_dicts_round_trip_through_yaml(tmp_path: Path, data: dict[str, Any]) -> None:
    p = tmp_path / "well.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    loaded = load_study(p)
    assert loaded.study == Study.model_validate(data)
    assert len(expand(loaded.study)) == plan_size(loaded.study).runs


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet="[]{}:,&*!- \n\tab1'\"#|>?%@`", max_size=200)))
def test_any_text_parses_or_fails_in_one_line(text: str) -> None:
    try:
        parse_yaml(text, Path("t.yaml"))
    except StudyError as exc:
        assert str(exc).startswith("t.yaml") and "\n" not in str(exc)


# ------------------------------------------------------------------ the CLI answers each hostile file in one line


@pytest.mark.parametrize("case", ["duplicate", "bomb", "deep", "seeds"])
def test_validate_answers_hostile_files_in_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    text = {
        "duplicate": HEAD + "grid:\n  train.lr: [1.0e-4]\ngrid:\n  data.fraction: [0.5]\n",
        "bomb": alias_bomb(),
        "deep": HEAD + "grid:\n  x: " + "[" * 5000 + "]" * 5000 + "\n",
        "seeds": HEAD + "seeds: 100000000\n",
    }[case]
    expected = {
        "duplicate": "h.yaml:5: grid: duplicate key 'grid' (first at line 3); YAML would keep only the last one",
        "bomb": f"h.yaml:7: a4: expands to more than {MAX_NODES} values through YAML aliases (&anchor / *alias); "
        "write the values out or use fewer aliases",
        "deep": f"h.yaml:4: grid.x.0.0.0.0.…: nested more than {MAX_DEPTH} levels deep (the limit for a study file)",
        "seeds": "h.yaml:3: seeds: the study plans 100000000 runs (1 task x 100000000 seeds), more than the limit "
        "of 10000; set plan_limit: N in the study or pass --plan-limit N if you mean it",
    }[case]
    write(tmp_path, text, "h.yaml")
    for cmd in (["validate"], ["plan"]):
        proc = subprocess.run(
            [sys.executable, "-m", "kdgrid", *cmd, "h.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"Error: {expected}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.yaml"]


def test_plan_limit_option_raises_the_limit(tmp_path: Path) -> None:
    write(tmp_path, HEAD + "seeds: 12\nplan_limit: 10\n", "h.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "kdgrid", "plan", "h.yaml", "--plan-limit", "12", "--limit", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "12 runs, 12 unique" in proc.stdout


# ------------------------------------------------------------------ damaged stores


def kdgrid_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdgrid", *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300
    )


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of a few MB (20 seeds x 4 cells), so cutting it in half reaches data blocks."""
    db = tmp_path_factory.mktemp("store") / "k.duckdb"
    go(db, grid_study(seeds=20), FakeRunner())
    return db


def damaged_copy(src: Path, dst: Path, how: str) -> Path:
    data = src.read_bytes()
    if how == "truncated":
        dst.write_bytes(data[: len(data) // 2])
    elif how == "last byte cut":
        dst.write_bytes(data[:-1])
    elif how == "corrupt block":
        b = bytearray(data)
        b[8300:8364] = bytes(x ^ 0xFF for x in b[8300:8364])  # inside DuckDB's first metadata block
        dst.write_bytes(bytes(b))
    else:
        dst.write_bytes(data[:100])
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "last byte cut", "corrupt block", "header only"])
def test_status_and_report_on_a_damaged_store_say_so_in_one_line(big_store: Path, tmp_path: Path, how: str) -> None:
    db = damaged_copy(big_store, tmp_path / "d.duckdb", how)
    before = db.read_bytes()
    for cmd in (["status"], ["report", "--no-plots", "--format", "json"]):
        proc = kdgrid_cli(*cmd, "--db", str(db), cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"Error: {db}: ")
        assert ("the store is damaged" in lines[0]) or ("not a DuckDB database or unreadable" in lines[0])
    assert db.read_bytes() == before  # nothing written into it


def test_damaged_blocks_found_by_a_query_are_a_store_error(big_store: Path, tmp_path: Path) -> None:
    db = damaged_copy(big_store, tmp_path / "d.duckdb", "truncated")
    with pytest.raises(StoreError, match=r"the store is damaged \(IO Error: Could not read enough bytes"):
        with open_store(db, read_only=True) as s:
            s.con.execute("SELECT sum(value), count(*) FROM metrics").fetchall()


def test_a_query_mistake_is_not_called_damage(big_store: Path) -> None:
    with pytest.raises(duckdb.CatalogException), open_store(big_store, read_only=True) as s:
        s.con.execute("SELECT * FROM no_such_table")


def test_a_store_from_a_newer_kdgrid_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    with open_store(db) as s:
        s.con.execute("UPDATE kdgrid_meta SET value = '2' WHERE key = 'schema_version'")
    before = db.read_bytes()
    for read_only in (True, False):
        with pytest.raises(StoreError) as info, open_store(db, read_only=read_only):
            pass
        assert str(info.value) == (
            f"{db}: written by a newer kdgrid (store schema version 2; this kdgrid reads up "
            "to 1); upgrade kdgrid, or choose another --db"
        )
    assert db.read_bytes() == before


def test_a_garbled_schema_version_is_damage(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    with open_store(db) as s:
        s.con.execute("UPDATE kdgrid_meta SET value = 'x1' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"the store is damaged \(kdgrid_meta.schema_version is 'x1', not a number\)"):
        with open_store(db, read_only=True):
            pass


# ------------------------------------------------------------------ damaged run directories


def _victim(db: Path) -> tuple[Any, Path]:
    study = grid_study(seeds=1)
    go(db, study, FakeRunner(), max_runs=1)
    victim = expand(study)[1]
    return victim, result_path(workdir_for(db), victim.run_id)


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"run_id": "abc", "status": "do', "not JSON or cut short"),
        ("\x00\x01 garbage", "not JSON or cut short"),
        ("", "empty"),
        ('["a list"]', "not a kdgrid result"),
    ],
)
def test_a_damaged_result_reruns_only_its_run_and_is_kept(tmp_path: Path, content: str, why: str) -> None:
    db = tmp_path / "k.duckdb"
    victim, rpath = _victim(db)
    rpath.parent.mkdir(parents=True)
    rpath.write_text(content)
    assert read_result(rpath) is None and why in (check_result(rpath)[1] or "")
    with open_store(db, read_only=True) as s:
        assert damaged_results(workdir_for(db), [victim.run_id, "nothing-here"]) == [
            (victim.run_id, check_result(rpath)[1])
        ]
        assert s is not None
    r = FakeRunner()
    out = go(db, grid_study(seeds=1), r)
    assert out.done == 3 and out.failed == 0 and len(r.calls) == 3  # the damaged run ran again, the first did not
    assert (rpath.parent / "result.json.damaged").read_text() == content
    assert read_result(rpath)["status"] == "done"
    assert counts(db) == {"done": 4}


def test_a_result_naming_another_run_is_not_stored_under_it(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    victim, rpath = _victim(db)
    stranger = FakeRunner()(victim.config, tmp_path / "someone-else", workdir=tmp_path, on_progress=None)
    rpath.parent.mkdir(parents=True)
    rpath.write_text(json.dumps(stranger))
    assert check_result(rpath) == (
        None,
        f"names run someone-else, not the run {victim.run_id} whose directory holds it",
    )
    out = go(db, grid_study(seeds=1), FakeRunner())
    assert out.recovered == 0 and out.done == 3
    with open_store(db, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM runs WHERE run_id = 'someone-else'").fetchone()[0] == 0


def test_status_lists_damaged_results(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    victim, rpath = _victim(db)
    rpath.parent.mkdir(parents=True)
    rpath.write_text('{"run_id": ')
    proc = kdgrid_cli("status", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"damaged result {rpath}: not JSON or cut short (Expecting value: line 1 column 12 (char 11)); the next "
        "'kdgrid run' runs it again and keeps the file as result.json.damaged"
    ) in proc.stdout


def test_a_finished_result_is_never_replaced_by_a_failure(tmp_path: Path) -> None:
    rpath = tmp_path / "runs" / "r1" / "result.json"
    done = {"run_id": "r1", "status": "done", "metrics": []}
    write_json_atomic(rpath, done)
    with pytest.raises(RunFailed, match="holds a finished result; it is kept"):
        write_json_atomic(rpath, {"run_id": "r1", "status": "failed", "error": "late failure"})
    assert read_result(rpath) == done
    write_json_atomic(rpath, {**done, "metrics": [1]})  # a finished result may replace a finished one
    assert read_result(rpath)["metrics"] == [1]


def test_a_full_disk_while_writing_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rpath = tmp_path / "runs" / "r1" / "result.json"
    with pytest.raises(RunFailed, match="No space left on device"):
        write_json_atomic(rpath, {"run_id": "r1", "status": "done"})
    assert list(rpath.parent.iterdir()) == []


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    """A real 256 KiB tmpfs (root and a mount permission needed; skipped otherwise)."""
    mnt = tmp_path / "fs"
    if not _mount_tmpfs(mnt, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root in a container that allows mounts)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_fails_only_the_runs_it_hits(tmp_path: Path, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDGRID_HOME", str(tiny_fs))
    db = tmp_path / "k.duckdb"  # the store on another disk, as a coordinator's would be
    study = grid_study(seeds=1)
    assert go(db, study, FakeRunner(), max_runs=1).done == 1
    first = next(iter((tiny_fs / "runs").iterdir())) / "result.json"
    kept = first.read_bytes()
    filler = tiny_fs / "filler"
    with filler.open("wb", buffering=0) as fh:  # fill the disk to the last block (unbuffered: close cannot fail)
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    out = go(db, study, FakeRunner())
    assert out.failed == 3 and all("No space left on device" in e for _, e in out.errors)
    assert first.read_bytes() == kept
    assert counts(db) == {"done": 1, "failed": 3}
    assert not [p for p in tiny_fs.rglob(".tmp-*")]
    filler.unlink()  # space again: the failed runs run on request, the finished one is not redone
    r = FakeRunner()
    assert go(db, study, r, retry_failed=True).done == 3 and len(r.calls) == 3
    assert counts(db) == {"done": 4}


def test_read_only_run_directories(tmp_path: Path, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDGRID_HOME", str(tiny_fs))
    db = tmp_path / "k.duckdb"
    study = grid_study(seeds=1)
    planned = expand(study)
    # A run that finished (result written) but was never stored, then the file system went read-only.
    done = planned[0]
    res = FakeRunner()(done.config, tiny_fs / "runs" / done.run_id, workdir=tiny_fs, on_progress=None)
    write_json_atomic(result_path(tiny_fs, done.run_id), res)
    assert subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True).returncode == 0
    r = FakeRunner()
    out = go(db, study, r)
    # The finished one is stored, not rerun; the others fail at their run directory, before any compute.
    assert out.done == 1 and out.failed == 3 and r.calls == []
    assert all("Read-only file system" in e for _, e in out.errors), out.errors
    assert counts(db) == {"done": 1, "failed": 3}
    assert read_result(result_path(tiny_fs, done.run_id)) == res


# ------------------------------------------------------------------ remote code


def _model_with_code(root: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config asks transformers to import a module from the folder."""
    import shutil

    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = root / "code-ran"
    (model / "evil_config.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig\nclass EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    # A model type transformers does not ship, so only the folder's code could load it.
    cfg["model_type"] = "evil-bert"
    cfg["auto_map"] = {"AutoConfig": "evil_config.EvilConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    return model, marker


def test_a_model_with_code_is_refused_unless_trusted(tmp_path: Path, tiny_model_dir: Path) -> None:
    from kdgrid.errors import ModelError
    from kdgrid.train.models import load_classifier, load_tokenizer

    model, marker = _model_with_code(tmp_path, tiny_model_dir)
    with pytest.raises(ModelError) as info:
        load_classifier(str(model), 2)
    assert str(info.value) == (
        f"cannot load model {model}: it ships its own Python code, which kdgrid runs only "
        "when the study sets teacher.trust_remote_code: true"
    )
    try:  # its tokenizer files name a shipped class: it may load, but never through the folder's code
        load_tokenizer(str(model))
    except ModelError as exc:
        assert "teacher.trust_remote_code: true" in str(exc)
    assert not marker.exists()
    try:  # the flag is what decides: with it the folder's code runs
        load_classifier(str(model), 2, trust_remote_code=True)
    except ModelError:
        pass
    assert marker.exists()


def test_trusting_remote_code_changes_no_run_id_and_is_dumped_only_when_true() -> None:
    base = {"name": "x", "tasks": ["cola"], "seeds": 1}
    plain = expand(Study.model_validate(base))[0]
    trusted = expand(Study.model_validate({**base, "teacher": {"trust_remote_code": True}}))[0]
    assert (
        "trust_remote_code" not in plain.config_data()["teacher"]
        and trusted.config_data()["teacher"]["trust_remote_code"] is True
    )
    assert plain.run_id == trusted.run_id


def test_the_report_says_when_remote_code_was_trusted() -> None:
    from kdgrid.report.reproducibility import remote_code_trusted

    assert remote_code_trusted(HEAD) == []
    assert remote_code_trusted(HEAD + "teacher: {trust_remote_code: false}\n") == []
    assert remote_code_trusted(HEAD + "teacher: {model: org/m, trust_remote_code: true}\n") == [
        "teacher.trust_remote_code"
    ]
    assert remote_code_trusted(HEAD + "grid: {teacher.trust_remote_code: [false, true]}\n") == ["grid"]
    assert remote_code_trusted(HEAD + "variants: {teacher: {custom: {model: org/m, trust_remote_code: true}}}\n") == [
        "variants.teacher.custom"
    ]


def test_the_reproducibility_facts_name_trusted_remote_code(tmp_path: Path) -> None:
    from test_report import make_provenance

    from kdgrid.report.reproducibility import _facts

    plain = make_provenance(tmp_path)
    assert "Remote code" not in list(_facts(plain, tmp_path).frame["Item"])
    trusted = make_provenance(tmp_path, text=plain.text + "teacher: {model: org/m, trust_remote_code: true}\n")
    facts = dict(zip(_facts(trusted, tmp_path).frame["Item"], _facts(trusted, tmp_path).frame["Value"]))
    assert facts["Remote code"] == "trusted (teacher.trust_remote_code): the teacher model's own Python code ran"


# ------------------------------------------------------------------ search blocks


def test_a_grid_search_is_counted_not_listed(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        HEAD + "search:\n  sampler: grid\n  params:\n    train.batch_size: {type: int, low: 1, high: 1000000000000}\n",
    )
    assert study_error(p) == (
        f"{p}:3: search: sampler 'grid' has 1000000000000 points, more than 10000; "
        "use fewer values (a larger step) or another sampler"
    )


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["int", "float"]), low=st.integers(-50, 50), span=st.integers(0, 60), step=st.integers(1, 7)
)
def test_grid_count_is_the_length_of_grid_values(kind: str, low: int, span: int, step: int) -> None:
    from kdgrid.study.schema import SearchParam

    p = SearchParam(type=kind, low=low, high=low + span, step=step if kind == "int" else step / 10)  # type: ignore[arg-type]
    assert p.grid_count() == len(p.grid_values() or [])


def test_a_search_study_with_huge_seeds_is_refused_before_its_seeds_are_listed(tmp_path: Path) -> None:
    write(
        tmp_path,
        HEAD + "seeds: 100000000\nsearch:\n  params:\n    train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}\n",
        "h.yaml",
    )
    proc = kdgrid_cli("validate", "h.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: h.yaml:3: seeds: the study plans 100000000 runs")


def test_an_unknown_option_is_a_usage_message_not_a_traceback(tmp_path: Path) -> None:
    proc = kdgrid_cli("status", "--bogus", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("Error: No such option: --bogus")
