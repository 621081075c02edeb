"""Registries and plug-ins (docs/plugins.md): the built-ins unchanged through the registries, entry-point
plug-ins (the example package), duplicate names, settings errors, provenance in run ids, what validate refuses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdgrid.errors import PlanError, PluginError, StudyError
from kdgrid.plan import expand, plan_study
from kdgrid.plan.shapes import Shape, check_run
from kdgrid.plugins import Source, build_registry, builtin, registry
from kdgrid.study import load_study
from kdgrid.study.schema import RunConfig, Study

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "kdgrid-example-plugin"


def example_installed() -> None:
    try:
        metadata.distribution(EXAMPLE)
    except metadata.PackageNotFoundError:
        pytest.fail(
            f"{EXAMPLE} is not installed: pip install -e examples/kdgrid-example-plugin (scripts/setup.sh does)"
        )


# --------------------------------------------------------------------------- the built-ins, unchanged

# Per study file: sha256 of the comma-joined sorted run ids (first 16 hex) and their count, computed at
# commit bb0c9fcaa02b25a429f75d26dfb5b8ccffcc872f (before the registries) with
#   sorted({r.run_id for r in kdgrid.plan.expand(kdgrid.study.load_study(path).study)})
RUN_IDS_BEFORE = {
    "ablation-cpu.yaml": ("472b7dea6104d495", 200),
    "ablation.yaml": ("0748880593681eff", 400),
    "demo.yaml": ("afd20bc31afbd257", 6),
    "learnable_mapping-cpu.yaml": ("fd9c19a5487a4124", 30),
    "learnable_steps-cpu.yaml": ("2c4f06dd110bae29", 30),
    "objectives-cpu.yaml": ("cc9ea291e8843d2f", 225),
    "objectives.yaml": ("cf3157d57a2fd37d", 252),
    "search_alpha_temperature.yaml": ("edca3b6bb9daa371", 2),
    "what_is_lost-cpu.yaml": ("cad6833a32da3e28", 200),
    "what_is_lost.yaml": ("53d6cc2d7e3ce385", 192),
}


@pytest.mark.parametrize("name", sorted(RUN_IDS_BEFORE))
def test_committed_studies_keep_their_run_ids(name: str) -> None:
    # Frozen copies of the study files these ids were computed from (tests/data/golden_studies/, the committed
    # studies as of 0.2): the shipped studies change with their designs, the ids of a given file must not.
    ids = sorted({r.run_id for r in expand(load_study(ROOT / "tests" / "data" / "golden_studies" / name).study)})
    assert (hashlib.sha256(",".join(ids).encode()).hexdigest()[:16], len(ids)) == RUN_IDS_BEFORE[name]


# Loss values of DistillObjective on tests/test_objectives.py's fixed batch and tiny models, computed with the
# pre-registry class at commit bb0c9fcaa02b25a429f75d26dfb5b8ccffcc872f: torch.manual_seed(123) before building
# DistillObjective(Objective.model_validate(objective), stage=stage, is_regression=False, n_teacher_layers=4,
# n_student_layers=2, teacher_hidden=32, student_hidden=..., teacher_heads=4, student_heads=..., num_train_examples=16,
# seed=5), then objective(run(student, batch), run(teacher, batch), labels, indices), printed with "%.9g".
CASES: dict[str, tuple[dict[str, Any], str, str, dict[str, float]]] = {
    "vanilla_kd": (
        {"prediction": {"beta": 0.5, "temperature": 2.0}},
        "joint",
        "narrow",
        {"loss": 0.548987627, "hard": 1.09792936, "soft": 4.5927085e-05},
    ),
    "tinybert_joint": (
        {
            "intermediate": {
                "attention": "mse",
                "hidden": "seq",
                "embedding": 1.0,
                "alpha": 0.5,
                "head_match": "mean",
                "weight": 2.0,
            }
        },
        "joint",
        "narrow",
        {"loss": 4.91469431, "soft": 4.59894072e-05, "att": 0.000113670321, "hid": 2.46078515, "emb": 1.22687483},
    ),
    "tinybert_stage1": (
        {
            "intermediate": {
                "attention": "mse",
                "hidden": "seq",
                "embedding": 1.0,
                "alpha": 0.5,
                "head_match": "mean",
                "weight": 2.0,
            }
        },
        "intermediate",
        "narrow",
        {"loss": 2.45732427, "att": 0.000113670321, "hid": 2.46078515, "emb": 1.22687483},
    ),
    "att_val_kl_last": (
        {
            "prediction": {"beta": 0.7, "temperature": 1.0, "t_squared": False},
            "intermediate": {"attention": "kl", "value": "kl", "alpha": 0.8},
            "mapping": "last",
        },
        "joint",
        "same_heads",
        {"loss": 0.330544978, "hard": 1.10085666, "soft": 0.000126773797, "att": 0.000106428051, "val": 0.000142595978},
    ),
    "minilm_val_mean": (
        {
            "intermediate": {"attention": "kl", "value": "kl", "alpha": 1.0, "head_match": "mean"},
            "mapping": "first_last",
        },
        "joint",
        "narrow",
        {"loss": 0.000345342007, "soft": 4.59894072e-05, "att": 3.84132363e-05, "val": 0.000260939356},
    ),
    "learnable_fixed": (
        {
            "intermediate": {"attention": "kl", "hidden": "cls", "alpha": 0.3},
            "mapping": {"kind": "learnable", "init": "fixed"},
        },
        "joint",
        "same_heads",
        {"loss": 2.29046416, "soft": 0.000126773797, "att": 0.000175025823, "hid": 3.27183557},
    ),
    "learnable_random_mse": (
        {
            "intermediate": {"attention": "mse", "hidden": "seq", "alpha": 0.5, "att_mse_padding": "tinybert"},
            "mapping": {"kind": "learnable", "init": "random"},
        },
        "intermediate",
        "same_heads",
        {"loss": 2.12194371, "att": 0.0003296957, "hid": 4.24355793},
    ),
    "contrast_explicit": (
        {
            "intermediate": {"hidden": "cls_contrast", "alpha": 0.0, "contrast_negatives": 8},
            "mapping": {"kind": "explicit", "layers": [2, 3]},
        },
        "joint",
        "narrow",
        {"loss": 6.9326539, "soft": 4.59894072e-05, "contrast": 6.93260813},
    ),
}


@pytest.fixture(scope="module")
def tiny_outputs() -> dict[str, Any]:
    import torch
    from conftest import tiny_bert
    from test_objectives import run

    teacher = tiny_bert(4, 4, 32, seed=0, vocab=100, num_labels=3, dropout=0.0).eval()
    students = {
        "narrow": tiny_bert(2, 2, 16, seed=1, vocab=100, num_labels=3, dropout=0.0),
        "same_heads": tiny_bert(2, 4, 32, seed=2, vocab=100, num_labels=3, dropout=0.0),
    }
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 3:] = 0
    batch = {
        "ids": torch.randint(0, 100, (3, 6), generator=g),
        "mask": mask,
        "labels": torch.tensor([0, 2, 1]),
        "indices": torch.tensor([0, 5, 11]),
    }
    with torch.no_grad():
        t = run(teacher, batch)
    return {"teacher": t, "students": students, "batch": batch, "run": run}


@pytest.mark.parametrize("case", sorted(CASES))
def test_builtin_terms_give_the_pre_registry_losses(case: str, tiny_outputs: dict[str, Any]) -> None:
    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.objectives import DistillObjective

    obj, stage, student_name, want = CASES[case]
    student = tiny_outputs["students"][student_name]
    batch = tiny_outputs["batch"]
    s = tiny_outputs["run"](student, batch)
    torch.manual_seed(123)
    dist = DistillObjective(
        Objective.model_validate(obj),
        stage=stage,
        is_regression=False,
        n_teacher_layers=4,
        n_student_layers=2,
        teacher_hidden=32,
        student_hidden=student.config.hidden_size,
        teacher_heads=4,
        student_heads=student.config.num_attention_heads,
        num_train_examples=16,
        seed=5,
    )
    got = {k: float(v.detach()) for k, v in dist(s, tiny_outputs["teacher"], batch["labels"], batch["indices"]).items()}
    assert set(got) == set(want)
    # The weighted sum is now one flat sum (w·α·att + w·α·val instead of w·(α·(att + val))): float32 rounding only.
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


# --------------------------------------------------------------------------- registry and entry points


def test_registry_lists_builtins_and_the_example_plugin() -> None:
    example_installed()
    reg = registry()
    assert {
        "kd_hard",
        "kd_soft",
        "att_mse",
        "att_kl",
        "val_kl",
        "hid_cls",
        "hid_seq",
        "hid_contrast",
        "emb_mse",
    } <= set(reg.names("losses"))
    assert set(reg.names("mappings")) >= {"uniform", "last", "first_last", "explicit", "learnable"}
    assert set(reg.names("students")) == {"teacher_layers", "width_slice", "random"}
    assert set(reg.names("metrics")) >= {"mcc", "accuracy", "f1", "pearson", "spearman"}
    assert reg.get("losses", "att_kl").source.builtin
    cos = reg.get("losses", "cosine_hidden").source
    assert (cos.package, cos.version) == (EXAMPLE, metadata.version(EXAMPLE))
    assert reg.get("mappings", "top").source.package == EXAMPLE


def test_kdgrid_plugins_command_lists_package_and_version() -> None:
    example_installed()
    out = subprocess.run(
        [sys.executable, "-m", "kdgrid", "plugins", "--json"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("losses", "cosine_hidden")]["package"] == EXAMPLE
    assert by_name[("losses", "cosine_hidden")]["version"] == metadata.version(EXAMPLE)
    assert by_name[("mappings", "top")]["settings"] == "stride"
    assert by_name[("losses", "att_kl")]["package"] == "kdgrid"


ATT_KL_AGAIN = next(s for s in builtin.LOSSES if s.name == "att_kl")  # a plug-in reusing a built-in's name


def _ep(name: str, value: str, group: str = "kdgrid.losses") -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=group)


def test_duplicate_names_are_refused_naming_both_sources() -> None:
    example_installed()
    spec = "kdgrid_example_plugin.specs:COSINE_HIDDEN"
    with pytest.raises(
        PluginError,
        match=r"'cosine_hidden' is registered twice: by .*cosine_hidden = "
        r"kdgrid_example_plugin.*and by .*cosine_hidden = kdgrid_example",
    ):
        build_registry([_ep("cosine_hidden", spec), _ep("cosine_hidden", spec)])
    # a plug-in may not take a built-in's name either
    with pytest.raises(PluginError, match=r"'att_kl' is registered twice: by kdgrid .* and by"):
        build_registry([_ep("att_kl", "test_plugins:ATT_KL_AGAIN")])


def test_broken_or_mismatched_entry_points_say_which() -> None:
    with pytest.raises(PluginError, match=r"cannot be loaded.*no_such_module"):
        build_registry([_ep("x", "no_such_module:X")])
    with pytest.raises(PluginError, match="differs from the spec's 'cosine_hidden'"):
        build_registry([_ep("cosine", "kdgrid_example_plugin.specs:COSINE_HIDDEN")])
    with pytest.raises(PluginError, match="loads MappingSpec, not a LossSpec"):
        build_registry([_ep("top", "kdgrid_example_plugin.specs:TOP")])


# --------------------------------------------------------------------------- study syntax and errors


def _study_file(tmp_path: Path, objective: str, student: str = "{layers: 2}") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ntasks: [rte]\nstudent: {student}\nobjective:\n{objective}")
    return path


def test_settings_errors_name_file_line_allowed_keys_and_registered_names(tmp_path: Path) -> None:
    example_installed()
    bad_key = _study_file(tmp_path, "  terms:\n    cosine_hidden:\n      weight: 1.0\n      tokenz: cls\n")
    with pytest.raises(
        StudyError,
        match=r"s\.yaml:8: objective\.terms: cosine_hidden\.tokenz: unknown key "
        r"\(allowed: tokens, project\)",
    ):
        load_study(bad_key)
    bad_value = _study_file(tmp_path, "  terms:\n    cosine_hidden: {tokens: first}\n")
    with pytest.raises(StudyError, match=r"s\.yaml:6: .*cosine_hidden\.tokens: .*'all' or 'cls'"):
        load_study(bad_value)
    unknown = _study_file(tmp_path, "  terms:\n    cosine_hiden: {}\n")
    with pytest.raises(StudyError, match=r"unknown loss term 'cosine_hiden' \(allowed: kd_hard, .*cosine_hidden"):
        load_study(unknown)
    bad_map = _study_file(tmp_path, "  mapping: {kind: topp}\n")
    with pytest.raises(
        StudyError,
        match=r"s\.yaml:5: objective\.mapping\.kind: unknown mapping 'topp' \(allowed: "
        r"uniform, .*top",
    ):
        load_study(bad_map)
    builtin_settings = _study_file(tmp_path, "  mapping: {kind: uniform, settings: {stride: 2}}\n")
    with pytest.raises(StudyError, match="built in and takes its settings from"):
        load_study(builtin_settings)
    bad_student = _study_file(tmp_path, "  prediction: {beta: 1.0}\n", student="{layers: 2, init: copy}")
    with pytest.raises(StudyError, match=r"student\.init: unknown student builder 'copy' \(allowed: teacher_layers"):
        load_study(bad_student)


def _run(objective: dict[str, Any], **extra: Any) -> RunConfig:
    return RunConfig.model_validate({"task": "rte", "seed": 0, "objective": objective, **extra})


def test_plugin_provenance_is_part_of_the_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    example_installed()
    builtin_only = _run({"intermediate": {"attention": "kl"}})
    assert "plugins" not in builtin_only.model_dump(mode="json")  # built-in runs: configs (and ids) as before
    study = {
        "name": "p",
        "tasks": ["rte"],
        "seeds": [0],
        "objective": {"terms": {"cosine_hidden": {"weight": 0.5}}, "mapping": {"kind": "top"}},
    }
    run = expand(Study.model_validate(study))[0]
    v = metadata.version(EXAMPLE)
    assert run.config_data()["plugins"]["losses.cosine_hidden"]["package"] == EXAMPLE
    assert run.config_data()["plugins"]["losses.cosine_hidden"]["version"] == v
    assert set(run.config_data()["plugins"]) == {"losses.cosine_hidden", "mappings.top"}
    assert run.config_data()["objective"]["terms"] == {
        "cosine_hidden": {"weight": 0.5, "tokens": "all", "project": False}
    }

    # other settings of the plug-in: another settings hash and run id
    study_cls = {**study, "objective": {**study["objective"], "terms": {"cosine_hidden": {"tokens": "cls"}}}}
    other = expand(Study.model_validate(study_cls))[0]
    assert (
        other.config_data()["plugins"]["losses.cosine_hidden"]["settings_sha"]
        != run.config_data()["plugins"]["losses.cosine_hidden"]["settings_sha"]
    )

    # a new version of the plug-in: new run ids, and the old run's config no longer validates
    entry = registry().get("losses", "cosine_hidden")
    monkeypatch.setitem(
        registry()._entries["losses"],
        "cosine_hidden",
        type(entry)(entry.spec, Source(EXAMPLE, v + ".post1", entry.source.entry_point)),
    )
    bumped = expand(Study.model_validate(study))[0]
    assert bumped.run_id != run.run_id
    with pytest.raises(ValueError, match=r"planned with plug-ins .* plan the study again"):
        RunConfig.model_validate(run.config_data())  # as a worker reads it from its job


def test_validate_refuses_a_term_the_student_cannot_serve() -> None:
    example_installed()
    teacher = Shape(layers=6, heads=12, hidden=384, intermediate=1536)
    narrow = {
        "name": "n",
        "tasks": ["rte"],
        "seeds": [0],
        "student": {"layers": 2, "hidden_size": 192, "heads": 6, "intermediate_size": 768, "init": "width_slice"},
        "objective": {"terms": {"cosine_hidden": {}}},
    }
    run = expand(Study.model_validate(narrow))[0]
    with pytest.raises(PlanError, match=r"objective\.terms\.cosine_hidden: compares hidden states of width 192"):
        check_run(run.config, teacher)
    narrow["objective"]["terms"]["cosine_hidden"]["project"] = True
    check_run(expand(Study.model_validate(narrow))[0].config, teacher)
    # the plug-in mapping answers for itself: stride 4 from a 2-layer student reaches below teacher layer 1
    deep = {
        **narrow,
        "student": {"layers": 2},
        "objective": {"terms": {"cosine_hidden": {}}, "mapping": {"kind": "top", "settings": {"stride": 6}}},
    }
    with pytest.raises(PlanError, match="mapping 'top' cannot map 2 student onto 6 teacher layers"):
        check_run(expand(Study.model_validate(deep))[0].config, teacher)
    # the example study validates offline against the MiniLM-L6 shape
    assert len(plan_study(load_study(ROOT / "studies" / "plugin_example.yaml").study)) == 80


def test_a_term_declares_what_it_needs() -> None:
    example_installed()
    import torch  # noqa: F401  (DistillObjective builds torch modules)
    from conftest import tiny_objective

    from kdgrid.train.objectives import DistillObjective

    def build(obj: dict[str, Any]) -> DistillObjective:
        return tiny_objective(obj)

    kd = build({})
    assert not kd.needs_hidden_states() and not kd.needs_qkv()  # the teacher's cached logits can serve it
    cos = build({"terms": {"cosine_hidden": {}}, "mapping": {"kind": "top"}})
    assert cos.needs_hidden_states() and not cos.needs_qkv() and cos.proj is None
    assert cos.teacher_layers_needed() == {3, 4} and cos.student_layers_needed() == {1, 2}
    att = build({"intermediate": {"attention": "kl", "alpha": 1.0}})
    assert att.needs_qkv() and not att.needs_hidden_states()


# --------------------------------------------------------------------------- the example study on a tiny model


def test_example_study_runs_on_a_tiny_model(tiny_model_dir: Path, make_cola_dir: Any, tmp_path: Path) -> None:
    example_installed()
    from kdgrid.train.run import run_one

    data = make_cola_dir(tmp_path / "glue", n_train=24, n_dev=8)
    raw = yaml.safe_load((ROOT / "studies" / "plugin_example.yaml").read_text())
    raw.update(
        tasks=["cola"],
        seeds=[0],
        teacher={"model": str(tiny_model_dir), "finetune": {"epochs": 1}},
        data={"dir": str(data), "max_seq_length": 32},
    )
    raw["train"].update(batch_size=8, epochs={"intermediate": 1, "prediction": 1})
    runs = {r.factors["method"]: r for r in expand(Study.model_validate(raw))}
    assert set(runs) == {"vanilla-kd", "att-kl", "cosine-hidden", "cosine-hidden-top"}
    for method in ("cosine-hidden-top", "vanilla-kd"):
        res = run_one(runs[method].config, tmp_path / "runs" / method, workdir=tmp_path)
        assert res["status"] == "done"
        names = {m["name"] for m in res["metrics"] if m.get("split") == "train"}
        layers = {m["name"]: m["value"] for m in res["metrics"] if m.get("split") == "layers"}
        if method == "vanilla-kd":
            assert "loss.cosine_hidden" not in names
            continue
        assert "loss.cosine_hidden" in names
        assert (layers["mapped.s1"], layers["mapped.s2"]) == (3.0, 4.0)  # 'top' on a 4-layer teacher
        assert (layers["copied.s1"], layers["copied.s2"]) == (3.0, 4.0)  # the student copies what it maps to


# --------------------------------------------------------------------------- student builders and metrics


def balanced_accuracy(pred: Any, gold: Any) -> float:
    """A plug-in metric for the test: mean recall over the classes present in gold."""
    import numpy as np

    return float(np.mean([np.mean(pred[gold == c] == c) for c in np.unique(gold)]))


def top_layers_student(teacher: Any, student_cfg: Any, seed: int, pointed: Any, settings: Any) -> Any:
    """A plug-in student builder for the test: the built-in copy, then the classifier re-drawn with a scale."""
    import torch

    from kdgrid.train.models import build_student

    model = build_student(teacher, student_cfg.model_copy(update={"init": "teacher_layers"}), seed, pointed)
    with torch.no_grad():
        model.classifier.weight.mul_(settings.scale)
    return model


def test_plugin_student_builder_and_metric_run_and_are_recorded(
    tiny_model_dir: Path, make_cola_dir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import Field

    from kdgrid.plugins import Entry, MetricSpec, Settings, StudentSpec
    from kdgrid.train.run import run_one

    class ScaleSettings(Settings):
        scale: float = Field(default=1.0, gt=0)

    source = Source("my-kd-ideas", "2.0", "kdgrid.students:scaled = test_plugins:...")
    monkeypatch.setitem(
        registry()._entries["students"],
        "scaled",
        Entry(StudentSpec("scaled", ScaleSettings, "test_plugins:top_layers_student", True), source),
    )
    monkeypatch.setitem(
        registry()._entries["metrics"],
        "balanced_accuracy",
        Entry(MetricSpec("balanced_accuracy", "test_plugins:balanced_accuracy"), source),
    )
    data = make_cola_dir(tmp_path / "glue", n_train=24, n_dev=8)
    study = {
        "name": "b",
        "tasks": ["cola"],
        "seeds": [0],
        "metrics": ["balanced_accuracy"],
        "teacher": {"model": str(tiny_model_dir), "finetune": {"epochs": 1}},
        "student": {"layers": 2, "init": "scaled", "settings": {"scale": 0.5}},
        "data": {"dir": str(data), "max_seq_length": 32},
        "train": {"epochs": 1, "batch_size": 8},
    }
    run = expand(Study.model_validate(study))[0]
    assert set(run.config_data()["plugins"]) == {"students.scaled", "metrics.balanced_accuracy"}
    assert run.config_data()["plugins"]["students.scaled"]["version"] == "2.0"
    with pytest.raises(StudyError, match=r"student\.settings\.scale|settings\.scale"):
        load_study(_write(tmp_path, {**study, "student": {"layers": 2, "init": "scaled", "settings": {"scale": -1}}}))
    res = run_one(run.config, tmp_path / "runs" / run.run_id, workdir=tmp_path)
    final = {m["name"] for m in res["metrics"] if m.get("stage") == "final" and m.get("split") == "dev"}
    assert {"mcc", "balanced_accuracy"} <= final


def _write(tmp_path: Path, study: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_validating_a_plugin_study_imports_no_torch() -> None:
    example_installed()
    code = (
        "import sys; from kdgrid.study import load_study; from kdgrid.plan import plan_study; "
        "plan_study(load_study('studies/plugin_example.yaml').study); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stage1_checkpoints_are_keyed_by_plugin_terms() -> None:
    example_installed()
    from kdgrid.train.run import stage1_key

    def key(terms: dict[str, Any]) -> str:
        return stage1_key(_run({"terms": terms}, train={"schedule": "two_stage", "epochs": 1}), "teacher")

    assert key({"cosine_hidden": {}}) != key({"cosine_hidden": {"tokens": "cls"}})
    assert key({"cosine_hidden": {}}) == key({"cosine_hidden": {"weight": 1.0, "tokens": "all"}})


def test_grids_and_searches_reach_plugin_settings(tmp_path: Path) -> None:
    example_installed()
    from kdgrid.search import check_search

    study = {
        "name": "g",
        "tasks": ["rte"],
        "seeds": [0],
        "grid": {"objective.terms.cosine_hidden.weight": [0.5, 1.0], "objective.mapping.settings.stride": [1, 2]},
        "objective": {"mapping": {"kind": "top"}},
    }
    runs = expand(Study.model_validate(study))
    assert len({r.run_id for r in runs}) == 4
    assert {r.config_data()["objective"]["mapping"]["settings"]["stride"] for r in runs} == {1, 2}
    search = {
        "name": "s",
        "tasks": ["rte"],
        "seeds": 2,
        "objective": {"terms": {"cosine_hidden": {}}},
        "search": {
            "params": {
                "objective.terms.cosine_hidden.weight": {"low": 0.1, "high": 2.0},
                "objective.terms.cosine_hidden.tokens": {"type": "categorical", "choices": ["all", "first"]},
            }
        },
    }
    with pytest.raises(StudyError, match=r"cosine_hidden\.tokens='first' makes an invalid run"):
        check_search(load_study(_write(tmp_path, search)))
