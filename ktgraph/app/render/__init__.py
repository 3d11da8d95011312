"""Pictures of graphs and plans: DOT built with the ``graphviz`` package, SVG from a dot binary."""
from .dot import FORMATS, find_renderer, render
from .graph import Details, details_of, graph_dot
from .matrix import matrix_dot
from .plan import plan_dot, plans_dot

__all__ = ["FORMATS", "Details", "details_of", "find_renderer", "graph_dot", "matrix_dot", "plan_dot", "plans_dot", "render"]
