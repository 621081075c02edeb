"""Study files: the Pydantic schema and the YAML loader (torch-free)."""

from kdgrid.study.loader import LoadedStudy, load_study
from kdgrid.study.schema import RunConfig, Study

__all__ = ["LoadedStudy", "RunConfig", "Study", "load_study"]
