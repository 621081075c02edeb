"""Pydantic models of a study file and of one resolved run.

A :class:`RunConfig` is everything that determines one run's result; its hash
is the run id. A :class:`Study` is a base ``RunConfig`` (minus task and seed)
plus the grid, variants, tasks, seeds, filters and analysis settings.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

if TYPE_CHECKING:
    from kdgrid.plugins import Kind

# The GLUE tasks a study may name, once (kdgrid/tasks.py holds each one's data and metrics; a test checks they agree).
TaskName = Literal["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
TASKS: tuple[str, ...] = get_args(TaskName)
ATTENTION_LOSSES = ("none", "mse", "kl")
HIDDEN_LOSSES = ("none", "cls", "seq", "cls_contrast")
VALUE_LOSSES = ("none", "kl")
MAPPINGS = ("uniform", "last", "first_last", "explicit", "learnable")
STUDENT_INITS = ("teacher_layers", "random", "width_slice")
SCHEDULES = ("joint", "two_stage")
HEAD_MATCH = ("equal", "mean")
#: Most runs a study may plan unless it sets ``plan_limit`` (or ``--plan-limit`` is given), and most points
#: of a grid search: the largest shipped study plans 480, and expanding 10,000 runs takes a few seconds.
DEFAULT_PLAN_LIMIT = 10_000

Prob = Annotated[float, Field(ge=0.0, le=1.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    """Base for every block: unknown keys are errors, values are re-validated on change."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FineTune(Strict):
    """How a teacher is fine-tuned on a task (part of the teacher cache key)."""

    epochs: PosInt = 3
    lr: PosFloat = 5.0e-5
    batch_size: PosInt = 32
    seed: NonNegInt = 0
    max_train_examples: PosInt | None = None
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    warmup_ratio: Prob = 0.1


class Teacher(Strict):
    """``model``: the alias ``minilm-l6``, a hub id, or a local directory."""

    model: str = "minilm-l6"
    finetune: FineTune = FineTune()
    # A model folder or hub repo may ship Python code (config.auto_map); it runs only when this is true.
    # Not part of a run's identity (plan/canonical.py): it decides whether such a model loads, not what it computes.
    trust_remote_code: bool = False

    @model_serializer(mode="wrap")
    def _omit_untrusted(self, handler: Any) -> Any:
        # Dumped only when true, so configs, run ids and search fingerprints of every study that never
        # trusted remote code stay what they were before the setting existed.
        out = handler(self)
        if isinstance(out, dict) and not self.trust_remote_code:
            out.pop("trust_remote_code", None)
        return out


class Student(Strict):
    """Student shape relative to the teacher; ``None`` keeps the teacher's value."""

    layers: PosInt = 2
    heads: PosInt | None = None
    hidden_size: PosInt | None = None
    intermediate_size: PosInt | None = None
    # A registered student builder (built-in: teacher_layers, random, width_slice; `kdgrid plugins`).
    init: str = "teacher_layers"
    # Teacher layers (1-based) copied into the student; None: the layers its mapping points to (student layers
    # the mapping leaves out, and a learnable mapping without 'layers', take every k-th: TinyBERT/PKD-skip).
    init_layers: list[PosInt] | None = None
    # The classifier (and pooler) from the fine-tuned teacher where the shapes allow (width_slice: its leading
    # slice), or a fresh classifier drawn from the run's seed (the papers' students).
    init_head: Literal["teacher", "random"] = "random"
    # Settings of a plug-in student builder (validated by its settings model; built-ins take none).
    settings: dict[str, Any] = {}

    @field_validator("init")
    @classmethod
    def _registered_builder(cls, v: str) -> str:
        return _registered("students", v, "student builder")

    @model_validator(mode="after")
    def _builder_settings(self) -> Student:
        self.__dict__["settings"] = _plugin_settings("students", self.init, self.settings)
        return self

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> Any:
        return _without_empty(handler(self), "settings")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> Student:
        if self.heads is not None and self.hidden_size is not None and self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        if self.init_layers is not None and len(self.init_layers) != self.layers:
            raise ValueError(
                f"init_layers has {len(self.init_layers)} entries but the student has {self.layers} layers"
            )
        return self


class Data(Strict):
    """Where data comes from and how much of it a run sees."""

    dir: str | None = None
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_train_examples: PosInt | None = None
    max_eval_examples: PosInt | None = None
    max_seq_length: PosInt = 64


class Epochs(Strict):
    intermediate: NonNegInt = 3
    prediction: PosInt = 3


class Train(Strict):
    schedule: Literal["joint", "two_stage"] = "joint"
    epochs: PosInt | Epochs = 3
    lr: PosFloat = 5.0e-5
    batch_size: PosInt = 32
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    warmup_ratio: Prob = 0.1
    max_grad_norm: PosFloat = 1.0
    # Cache the frozen teacher's logits/[CLS] states once per data set (exact: teacher is in eval mode).
    teacher_cache: bool = True
    # Dev scores after every epoch (learning curves, search pruning) or only after the last: on a CPU
    # the dev pass can cost as much as a short epoch, and it never changes the trained weights.
    eval_every_epoch: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _epochs_match_schedule(self) -> Train:
        if self.schedule == "two_stage" and isinstance(self.epochs, int):
            self.__dict__["epochs"] = Epochs(intermediate=self.epochs, prediction=self.epochs)
        if self.schedule == "joint" and isinstance(self.epochs, Epochs):
            # A grid or variant level `schedule: joint` over a two-stage base (whose epochs are per stage by now):
            # a joint run has no stage 1 and trains the prediction loss throughout, for the prediction stage's
            # epochs; one number written for both stages is that number. The base block itself may not say both
            # (Study._joint_base_has_one_epochs): there it is a slip, not a switch.
            self.__dict__["epochs"] = self.epochs.prediction
        return self


class Prediction(Strict):
    """Vanilla KD: L_pred = (1-beta)*hard + beta*T^2*KL(p_T || p_S) (MSE to the teacher for regression)."""

    beta: Prob = 1.0
    temperature: PosFloat = 1.0
    # Hinton's T^2 keeps gradient scale independent of T; TinyBERT omits it.
    t_squared: bool = True


class Intermediate(Strict):
    """L_layer = alpha*(L_att + L_val) + (1-alpha)*L_hid + embedding*L_emb."""

    attention: Literal["none", "mse", "kl"] = "none"
    hidden: Literal["none", "cls", "seq", "cls_contrast"] = "none"
    value: Literal["none", "kl"] = "none"
    embedding: Annotated[float, Field(ge=0.0)] = 0.0
    alpha: Prob = 0.5
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    head_match: Literal["equal", "mean"] = "equal"
    # Att-MSE: 'masked' averages over real (query, key) token pairs only, so alpha's weight does not depend on
    # how much padding a batch has; 'tinybert' is the original mean over every B*H*T*T entry, padded rows included.
    att_mse_padding: Literal["masked", "tinybert"] = "masked"
    contrast_temperature: PosFloat = 0.07
    contrast_momentum: Prob = 0.5
    contrast_negatives: PosInt = 4096

    @property
    def active(self) -> bool:
        """Whether a layer loss has weight: attention and value losses only with alpha > 0, the hidden loss only
        with alpha < 1 (the formula above; the plan's canonical config sets the others to 'none', and a
        two-stage run checked here must still have a stage 1 after that)."""
        if self.weight <= 0:
            return False
        return (
            (self.alpha > 0 and (self.attention != "none" or self.value != "none"))
            or (self.alpha < 1 and self.hidden != "none")
            or self.embedding > 0
        )


class Mapping(Strict):
    """Which teacher layer each student layer learns from (DESIGN §5)."""

    # A registered mapping (built-in: uniform, last, first_last, explicit, learnable; `kdgrid plugins`).
    kind: str = "uniform"
    # 'explicit': 1-based teacher layer per student layer; 'learnable': where init 'fixed' puts its peaks
    # (default: the uniform map), and so which layers the student copies by default.
    layers: list[PosInt] | None = None
    # Learnable: initial logits. 'uniform' all equal; 'fixed' (alias 'diagonal') a peak holding
    # init_weight of each row on the fixed map ('layers', else uniform); 'random' N(0, 1).
    init: Literal["uniform", "fixed", "diagonal", "random"] = "uniform"
    init_weight: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    # Learnable: the logits have their own AdamW group, lr and schedule, never decayed with the student's:
    # 'constant' keeps lr for the whole stage; 'warmup' ramps up over the student's warm-up, then stays.
    lr: PosFloat = 0.1
    schedule: Literal["constant", "warmup"] = "constant"
    # Settings of a plug-in mapping (validated by its settings model; the built-ins use the keys above).
    settings: dict[str, Any] = {}

    @field_validator("kind")
    @classmethod
    def _registered_mapping(cls, v: str) -> str:
        return _registered("mappings", v, "mapping")

    @model_validator(mode="after")
    def _mapping_settings(self) -> Mapping:
        from kdgrid.plugins import registry

        if registry().get("mappings", self.kind).source.builtin:
            if self.settings:
                raise ValueError(
                    f"settings: mapping '{self.kind}' is built in and takes its settings from "
                    "kind/layers/init/init_weight/lr/schedule, not 'settings'"
                )
        else:
            self.__dict__["settings"] = _plugin_settings("mappings", self.kind, self.settings)
        return self

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> Any:
        return _without_empty(handler(self), "settings")

    @model_validator(mode="after")
    def _explicit_needs_layers(self) -> Mapping:
        if self.kind == "explicit" and not self.layers:
            raise ValueError("mapping 'explicit' needs 'layers' (one teacher layer per student layer)")
        if self.kind not in ("explicit", "learnable") and self.layers is not None:
            raise ValueError(f"mapping '{self.kind}' takes no 'layers' (allowed with: explicit, learnable)")
        return self


class Objective(Strict):
    """Built-in terms through ``prediction``/``intermediate``; any registered term through ``terms``.

    ``terms``: registered loss term name -> ``{weight: w, ...its settings}`` (kdgrid.plugins.terms).
    """

    prediction: Prediction = Prediction()
    intermediate: Intermediate = Intermediate()
    mapping: Mapping = Mapping()
    terms: dict[str, dict[str, Any]] = {}

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("terms", mode="before")
    @classmethod
    def _terms(cls, v: Any) -> Any:
        from kdgrid.plugins import registry, validate_settings

        if not isinstance(v, dict):
            return v  # the type check names the problem
        out: dict[str, dict[str, Any]] = {}
        for name, values in v.items():
            _registered("losses", str(name), "loss term")
            values = {} if values is None else values
            if not isinstance(values, dict):
                raise ValueError(f"{name}: give a mapping such as {{weight: 1.0}} (got {values!r})")
            weight = values.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"{name}.weight: a number >= 0 (got {weight!r})")
            rest = {k: x for k, x in values.items() if k != "weight"}
            settings = validate_settings(registry().spec("losses", name), rest, str(name))
            out[str(name)] = {"weight": float(weight), **settings.model_dump(mode="json")}
        return out

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> Any:
        return _without_empty(handler(self), "terms")


def _plugin_settings(kind: Kind, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A registered plug-in's settings, validated by its settings model, as plain data."""
    from kdgrid.plugins import registry, validate_settings

    return validate_settings(registry().spec(kind, name), settings, "settings").model_dump(mode="json")


def _registered(kind: Any, name: str, what: str) -> str:
    from kdgrid.plugins import registry

    if not registry().has(kind, name):
        raise ValueError(f"unknown {what} '{name}' ({registry().names_hint(kind)})")
    return name


def _without_empty(dumped: Any, *keys: str) -> Any:
    """Drop empty plug-in fields from a dump, so configs (and run ids) of built-in-only runs are unchanged."""
    if isinstance(dumped, dict):
        for key in keys:
            if not dumped.get(key):
                dumped.pop(key, None)
    return dumped


class RunConfig(Strict):
    """Everything that determines one run's result. Its canonical JSON hash is the run id."""

    task: TaskName
    seed: NonNegInt
    teacher: Teacher = Teacher()
    student: Student = Student()
    data: Data = Data()
    train: Train = Train()
    objective: Objective = Objective()
    # Registered metrics scored besides the task's own (`kdgrid plugins`).
    metrics: list[str] = []
    # Filled by validation, never written by hand: every plug-in the run uses, with its package, version
    # and settings hash (kdgrid.plugins.terms.plugins_used), so a changed plug-in gives new run ids.
    plugins: dict[str, dict[str, str]] = {}

    @field_validator("metrics")
    @classmethod
    def _registered_metrics(cls, v: list[str]) -> list[str]:
        for name in v:
            _registered("metrics", name, "metric")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate metrics {v}")
        return v

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> Any:
        return _without_empty(handler(self), "metrics", "plugins")

    @model_validator(mode="after")
    def _record_plugins(self) -> RunConfig:
        from kdgrid.plugins.terms import plugins_used

        used = plugins_used(self)
        if self.plugins and self.plugins != used:
            raise ValueError(
                f"this run was planned with plug-ins {self.plugins} but {used or 'none'} are installed now: "
                "plan the study again (a changed plug-in gives new runs)"
            )
        self.__dict__["plugins"] = used
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        from kdgrid.plugins.terms import layer_loss_active

        if self.train.schedule == "two_stage" and not layer_loss_active(self.objective):
            raise ValueError("schedule 'two_stage' needs an intermediate objective (attention/hidden/value/embedding)")
        m = self.objective.mapping
        if m.kind in ("explicit", "learnable") and m.layers is not None and len(m.layers) != self.student.layers:
            raise ValueError(
                f"objective.mapping.layers has {len(m.layers)} entries but the student has {self.student.layers} layers"
            )
        return self


class Filter(BaseModel):
    """A partial assignment of dotted paths; a run matches when every entry equals."""

    model_config = ConfigDict(extra="allow")


class Sequential(Strict):
    """Run seeds in looks until each comparison is decided (``kdgrid run``; docs/sequential.md).

    Looks after ``first``, ``first + step``, ... seeds per cell, up to ``max_seeds`` (default: the
    study's ``seeds``, which are taken in order). Each comparison stops at the first look where it is
    *different* (α-spending boundary on the paired t test) or *equivalent* (repeated TOST within
    ``margin[metric]``); at the last look it is *inconclusive*.
    """

    first: Annotated[int, Field(ge=2)] = 3
    step: PosInt = 3
    max_seeds: Annotated[int, Field(ge=2)] | None = None
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    power: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8  # shown as the effects the design detects with it
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"
    margin: dict[str, PosFloat] = {}  # metric -> equivalence margin in the metric's units; none: no equivalence
    # Condition cells to compare with their baseline (partial factor levels; default: every cell).
    comparisons: list[dict[str, Any]] | None = None
    correction: Literal["bonferroni", "none"] = "bonferroni"  # α split over each task's comparisons


class TableLayout(Strict):
    """Which factors form the rows and which the columns of the report's pivot tables (names in full or
    by their last component; "task" too). Unplaced factors join the rows when only cols are given and
    the columns when rows are given; neither: the default layout (docs/report.md)."""

    rows: list[str] = []
    cols: list[str] = []


class Analysis(Strict):
    table: TableLayout = TableLayout()
    baseline: dict[str, Any] | None = None
    metric: str = "auto"
    factors: list[str] | None = None
    correction: Literal["holm", "fdr_bh", "bonferroni", "none"] = (
        "holm"  # = analyze.paired.CORRECTIONS (tests/test_contracts.py)
    )
    # Seed (within task) as a block in the ANOVA: the same seed means the same subset, order and init.
    block_seed: bool = True
    # Equivalence margin (TOST) in the metric's own units: one number for every metric, or metric -> margin.
    # 0.01 is one point on the ×100 scale of a GLUE score (docs/report.md, "Verdicts").
    equivalence_margin: PosFloat | dict[str, PosFloat] = 0.01
    sequential: Sequential | None = None


SEARCH_SAMPLERS = ("tpe", "random", "grid", "cmaes")
SEARCH_PRUNERS = ("median", "successive_halving", "none")


class SearchParam(Strict):
    """One searched setting: a float (optionally log scale or stepped), an int, or a list of choices."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: PosFloat | None = None
    choices: Annotated[list[str | bool | int | float | None], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical parameter needs non-empty 'choices'")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical parameter takes only 'choices' (not low, high, log or step)")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"duplicate choices {self.choices}")
            return self
        if self.choices is not None:
            raise ValueError(f"'choices' is for categorical parameters; a {self.type} parameter takes low and high")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is greater than high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.type == "int":
            for name, v in (("low", self.low), ("high", self.high), ("step", self.step)):
                if v is not None and v != int(v):
                    raise ValueError(f"int parameter needs an integer {name} (got {v})")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            # Optuna samples log-scale values continuously; a step grid on a log scale is undefined.
            raise ValueError("log scale and 'step' cannot be combined")
        return self

    def grid_count(self) -> int | None:
        """How many points :meth:`grid_values` has, computed without listing them (None: continuous)."""
        if self.type == "categorical":
            return len(self.choices or [])
        assert self.low is not None and self.high is not None  # guaranteed by _bounds
        if self.type == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        return None if self.step is None else int((self.high - self.low) / self.step + 1e-9) + 1

    def grid_values(self) -> list[Any] | None:
        """The points a grid search visits, or None when the parameter is continuous (a float without step)."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None  # guaranteed by _bounds
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = int((self.high - self.low) / self.step + 1e-9)
        # Rounded so 0.1 + 2 * 0.1 prints and hashes as 0.3 (run ids hash the value).
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]


class Search(Strict):
    """An Optuna search over settings of the base run (``kdgrid search``); docs/search.md."""

    params: Annotated[dict[str, SearchParam], Field(min_length=1)]
    metric: str = "auto"  # 'auto': each task's official metric
    task: str = "mean"  # a task name or 'mean' over the study's tasks
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: PosInt = 20
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "median"
    seeds_per_trial: PosInt = 1
    timeout_s: PosFloat | None = None
    baseline: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _grid_needs_points(self) -> Search:
        if self.sampler == "grid":
            continuous = [path for path, p in self.params.items() if p.grid_count() is None]
            if continuous:
                raise ValueError(
                    f"sampler 'grid' needs 'choices' or a 'step' for every parameter; "
                    f"{', '.join(continuous)} is a float without step"
                )
            # Counted, not listed: an int range of 10^12 points would exhaust memory before any answer.
            points = math.prod(p.grid_count() or 1 for p in self.params.values())
            if points > DEFAULT_PLAN_LIMIT:
                raise ValueError(
                    f"sampler 'grid' has {points} points, more than {DEFAULT_PLAN_LIMIT}; "
                    "use fewer values (a larger step) or another sampler"
                )
        return self


class Slurm(Strict):
    """Slurm settings for ``execute.executor: slurm`` (docs/execution.md); submitted through submitit."""

    partition: str | None = None
    gpus_per_run: NonNegInt = 1
    cpus_per_run: PosInt | None = None
    mem_gb: PosFloat | None = None
    time_min: PosInt | None = None  # per-run time limit; default: execute.timeout_s rounded up, else 60
    array_parallelism: PosInt = 16  # runs of the job array running at once
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = []  # shell lines run before each job (module load ..., source .venv/bin/activate)
    additional: dict[str, Any] = {}  # any other sbatch option, e.g. {exclude: node12}
    cluster: Literal["slurm", "local", "debug"] = "slurm"  # submitit's local/debug executors try a setup here
    poll_s: PosFloat = 30.0  # how often the coordinator looks for finished runs


class Execute(Strict):
    """Where and how runs execute (never part of a run's identity); CLI options override it."""

    executor: Literal["local", "slurm"] = "local"
    workers: NonNegInt = 1  # worker processes (0: in the coordinator's process, one run at a time)
    gpus: list[str] | None = None  # one worker slot per entry, CUDA_VISIBLE_DEVICES=<entry>
    timeout_s: PosFloat | None = None  # per run
    retries: NonNegInt = 1  # more attempts for failures that can pass (killed worker, out of memory)
    slurm: Slurm = Slurm()

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_list(cls, v: Any) -> Any:
        if isinstance(v, (str, int)):
            v = str(v).split(",")
        if isinstance(v, list):
            v = [str(g).strip() for g in v]
            if not v or not all(v):
                raise ValueError("list GPU indices such as [0, 1] (an index twice gives that GPU two slots)")
        return v


def _run_field(path: str) -> Any:
    """The type of the run config's field at a dotted path, None when the path names no field (a plug-in's
    free-form settings, a typo the plan reports)."""
    model: Any = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        if i == len(parts) - 1:
            return ann
        model = next((a for a in (*get_args(ann), ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None


def _numeric_levels(path: str, levels: list[Any]) -> list[Any]:
    """Levels of a numeric field given as text ("5e-5") as the number the run gets, so a cell's label, a filter
    and the duplicate check see 5e-05 however it was written; anything else as given."""
    if not any(isinstance(x, str) for x in levels):
        return levels
    ann = _run_field(path)
    if ann is None:
        return levels
    adapter = TypeAdapter(ann)
    out = []
    for level in levels:
        if isinstance(level, str):
            try:
                as_field = adapter.validate_python(level)
            except ValidationError:
                as_field = level  # the plan reports it, with the run it belongs to
            if isinstance(as_field, (int, float)) and not isinstance(as_field, bool):
                level = as_field
        out.append(level)
    return out


def _same_level(level: Any) -> Any:
    """Two levels are one when they are the same number (1 and 1.0, 5e-5 and 0.00005), else the same text."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return ("number", level)
    return ("other", repr(level))


class Study(Strict):
    """A study file: a base run, the factors to vary, tasks and seeds."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    teacher: Teacher = Teacher()
    student: Student = Student()
    data: Data = Data()
    train: Train = Train()
    objective: Objective = Objective()
    metrics: list[str] = []  # registered metrics scored besides each task's own
    tasks: Annotated[list[TaskName], Field(min_length=1)]
    seeds: PosInt | Annotated[list[NonNegInt], Field(min_length=1)] = 3
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    variants: dict[str, Annotated[dict[str, dict[str, Any]], Field(min_length=1)]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    analysis: Analysis = Analysis()
    search: Search | None = None
    execute: Execute = Execute()  # study level: never part of a run's config or id
    # Most runs the plan may have (before include/exclude); None: DEFAULT_PLAN_LIMIT. Never part of a run.
    plan_limit: PosInt | None = None

    @field_validator("train", mode="before")
    @classmethod
    def _joint_base_has_one_epochs(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("schedule", "joint") == "joint" and isinstance(v.get("epochs"), dict):
            raise ValueError("epochs: use one integer with schedule 'joint' (allowed: int)")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list):
            dup = sorted(s for s, n in Counter(v).items() if n > 1)  # not v.count: quadratic in a long list
            if dup:
                raise ValueError(f"duplicate seeds {dup}")
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        dup = sorted(t for t, n in Counter(v).items() if n > 1)
        if dup:
            raise ValueError(f"duplicate tasks {dup}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_levels_unique(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for path, levels in v.items():
            if path in ("task", "seed", "tasks", "seeds"):
                raise ValueError(f"'{path}' cannot be a grid factor: use the top-level 'tasks'/'seeds'")
            out[path] = _numeric_levels(path, levels)
            if len({_same_level(x) for x in out[path]}) != len(levels):
                raise ValueError(f"grid factor '{path}' has duplicate levels {levels}")
        return out

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def base_config(self) -> dict[str, Any]:
        """The run fields shared by every run, as plain data (task and seed added by the plan)."""
        out = self.model_dump(include={"teacher", "student", "data", "train", "objective", "metrics"}, mode="json")
        # The plug-in fields a dump drops when empty stay here, so grids and variants can name them.
        out["objective"].setdefault("terms", {})
        out["objective"]["mapping"].setdefault("settings", {})
        out["student"].setdefault("settings", {})
        return out
