"""The compiler and the plan it produces."""
from .compiler import compile_plan, gradient_groups, regressor_key, stage_plans
from .plan import INPUT, Aggregate, Call, Group, Plan, Term

__all__ = ["INPUT", "Aggregate", "Call", "Group", "Plan", "Term", "compile_plan", "gradient_groups",
           "regressor_key", "stage_plans"]
