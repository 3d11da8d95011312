"""Pictures of graphs and plans: DOT built with the ``graphviz`` package, SVG from a dot binary."""
from .render import find_renderer, graph_dot, model_details, plan_dot, plans_dot, render

__all__ = ["find_renderer", "graph_dot", "model_details", "plan_dot", "plans_dot", "render"]
