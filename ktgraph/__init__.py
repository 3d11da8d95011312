"""ktgraph: knowledge-transfer graphs for online distillation, declared in YAML.

Data flows one way: YAML (``spec``) -> resolved graph (``graph``) -> execution plan
(``compile``) -> training and evaluation (``runtime``), with models from ``zoo``.
"""
__version__ = "0.1.0"
