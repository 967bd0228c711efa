"""Graph-to-graph passes; `pipeline.py` lists them in order for each mode."""

from .base import Pass, PassResult, apply_pass
from .pipeline import PASSES, parse_pipeline, pipeline_for, run_pipeline

__all__ = ["PASSES", "Pass", "PassResult", "apply_pass", "parse_pipeline", "pipeline_for", "run_pipeline"]
