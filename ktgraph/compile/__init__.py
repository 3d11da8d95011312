"""The compiler: a bound graph lowered to a plan (an IR), rewritten by passes into the run's program."""
from .ir import INPUT, Aggregate, Call, Group, Plan, Program, Step, Term, Value
from .passes import EVAL_PASSES, TRAIN_PASSES, gradient_groups
from .pipeline import compile_plan, compile_program, run_passes, trainable, untrained

__all__ = ["EVAL_PASSES", "INPUT", "TRAIN_PASSES", "Aggregate", "Call", "Group", "Plan", "Program", "Step", "Term",
           "Value", "compile_plan", "compile_program", "gradient_groups", "run_passes", "trainable", "untrained"]
