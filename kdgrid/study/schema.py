"""Pydantic models of a study file and of one resolved run.

A :class:`RunConfig` is everything that determines one run's result; its hash
is the run id. A :class:`Study` is a base ``RunConfig`` (minus task and seed)
plus the grid, variants, tasks, seeds, filters and analysis settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
ATTENTION_LOSSES = ("none", "mse", "kl")
HIDDEN_LOSSES = ("none", "cls", "seq", "cls_contrast")
VALUE_LOSSES = ("none", "kl")
MAPPINGS = ("uniform", "last", "first_last", "explicit", "learnable")
STUDENT_INITS = ("teacher_layers", "random", "width_slice")
SCHEDULES = ("joint", "two_stage")
HEAD_MATCH = ("equal", "mean")

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


class Student(Strict):
    """Student shape relative to the teacher; ``None`` keeps the teacher's value."""

    layers: PosInt = 2
    heads: PosInt | None = None
    hidden_size: PosInt | None = None
    intermediate_size: PosInt | None = None
    init: Literal["teacher_layers", "random", "width_slice"] = "teacher_layers"
    # Teacher layers (1-based) copied into the student; None: every k-th (TinyBERT/PKD-skip).
    init_layers: list[PosInt] | None = None

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> Student:
        if self.heads is not None and self.hidden_size is not None and self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}"
            )
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
            raise ValueError("epochs: use one integer with schedule 'joint' (allowed: int)")
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
    contrast_temperature: PosFloat = 0.07
    contrast_momentum: Prob = 0.5
    contrast_negatives: PosInt = 4096

    @property
    def active(self) -> bool:
        return (
            self.weight > 0
            and (self.attention != "none" or self.hidden != "none" or self.value != "none" or self.embedding > 0)
        )


class Mapping(Strict):
    """Which teacher layer each student layer learns from (DESIGN §5)."""

    kind: Literal["uniform", "last", "first_last", "explicit", "learnable"] = "uniform"
    layers: list[PosInt] | None = None  # for 'explicit': 1-based teacher layer per student layer
    init: Literal["uniform", "diagonal", "random"] = "uniform"  # learnable: initial logits
    lr: PosFloat = 1.0e-2  # learnable: learning rate of the mapping logits

    @model_validator(mode="after")
    def _explicit_needs_layers(self) -> Mapping:
        if self.kind == "explicit" and not self.layers:
            raise ValueError("mapping 'explicit' needs 'layers' (one teacher layer per student layer)")
        return self


class Objective(Strict):
    prediction: Prediction = Prediction()
    intermediate: Intermediate = Intermediate()
    mapping: Mapping = Mapping()

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v


class RunConfig(Strict):
    """Everything that determines one run's result. Its canonical JSON hash is the run id."""

    task: Literal["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    seed: NonNegInt
    teacher: Teacher = Teacher()
    student: Student = Student()
    data: Data = Data()
    train: Train = Train()
    objective: Objective = Objective()

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        inter = self.objective.intermediate
        if self.train.schedule == "two_stage" and not inter.active:
            raise ValueError("schedule 'two_stage' needs an intermediate objective (attention/hidden/value/embedding)")
        m = self.objective.mapping
        if m.kind == "explicit" and m.layers is not None and len(m.layers) != self.student.layers:
            raise ValueError(
                f"objective.mapping.layers has {len(m.layers)} entries but the student has {self.student.layers} layers"
            )
        return self


class Filter(BaseModel):
    """A partial assignment of dotted paths; a run matches when every entry equals."""

    model_config = ConfigDict(extra="allow")


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
    correction: Literal["holm", "fdr_bh", "bonferroni", "none"] = "holm"
    # Seed (within task) as a block in the ANOVA: the same seed means the same subset, order and init.
    block_seed: bool = True
    # Equivalence margin (TOST) in the metric's own units: one number for every metric, or metric -> margin.
    # 0.01 is one point on the ×100 scale of a GLUE score (docs/report.md, "Verdicts").
    equivalence_margin: PosFloat | dict[str, PosFloat] = 0.01


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
            continuous = [path for path, p in self.params.items() if p.grid_values() is None]
            if continuous:
                raise ValueError(
                    f"sampler 'grid' needs 'choices' or a 'step' for every parameter; "
                    f"{', '.join(continuous)} is a float without step"
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


class Study(Strict):
    """A study file: a base run, the factors to vary, tasks and seeds."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    teacher: Teacher = Teacher()
    student: Student = Student()
    data: Data = Data()
    train: Train = Train()
    objective: Objective = Objective()
    tasks: Annotated[list[Literal["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]], Field(min_length=1)]
    seeds: PosInt | Annotated[list[NonNegInt], Field(min_length=1)] = 3
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    variants: dict[str, Annotated[dict[str, dict[str, Any]], Field(min_length=1)]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    analysis: Analysis = Analysis()
    search: Search | None = None
    execute: Execute = Execute()  # study level: never part of a run's config or id

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list):
            dup = sorted({s for s in v if v.count(s) > 1})
            if dup:
                raise ValueError(f"duplicate seeds {dup}")
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"duplicate tasks {dup}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_levels_unique(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, levels in v.items():
            if path in ("task", "seed", "tasks", "seeds"):
                raise ValueError(f"'{path}' cannot be a grid factor: use the top-level 'tasks'/'seeds'")
            if len({repr(x) for x in levels}) != len(levels):
                raise ValueError(f"grid factor '{path}' has duplicate levels {levels}")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def base_config(self) -> dict[str, Any]:
        """The run fields shared by every run, as plain data (task and seed added by the plan)."""
        return self.model_dump(include={"teacher", "student", "data", "train", "objective"}, mode="json")
