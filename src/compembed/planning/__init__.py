"""Memory budgets: closed-form bytes of every scheme, and a planner that meets a budget per feature."""
from .budget import (STATE_FACTORS, feature_bytes, feature_rows, feature_values, format_bytes, parse_bytes,
                     robe_value_bytes, state_factor)
from .matching import UNIFORM_METHODS, match_budget
from .planner import FeaturePlan, Plan, PlanError, budget_for_compression, plan_for_dataset, plan_tables

__all__ = [
    "STATE_FACTORS", "feature_bytes", "feature_rows", "feature_values", "format_bytes", "parse_bytes", "robe_value_bytes",
    "state_factor",
    "UNIFORM_METHODS", "match_budget",
    "FeaturePlan", "Plan", "PlanError", "budget_for_compression", "plan_for_dataset", "plan_tables",
]
