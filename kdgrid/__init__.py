"""kdgrid: declarative knowledge-distillation studies with the statistics built in."""

__version__ = "0.2.0"
