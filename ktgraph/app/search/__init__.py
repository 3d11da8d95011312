"""Finding the graph: a ``search:`` section, Optuna studies shared by worker processes, ASHA pruning
through the training events, and the best trial written back as a graph file."""
from .command import report_search, run_search, search_command
from .folder import load_search
from .space import Search, read_search

__all__ = ["Search", "load_search", "read_search", "report_search", "run_search", "search_command"]
