"""`realm demo`: REALM end to end on Wikipedia lead sections with all-MiniLM-L6-v2 weights (see `run`)."""

from realm.demo.estimates import StageEstimate
from realm.demo.run import DemoConfig, DemoResult, StageReport, default_cache_dir, run_demo

__all__ = ["DemoConfig", "DemoResult", "StageEstimate", "StageReport", "default_cache_dir", "run_demo"]
