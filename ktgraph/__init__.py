"""ktgraph: knowledge-transfer graphs for online distillation, declared in YAML.

Data flows one way: the language (``spec``) -> the resolved graph (``graph``) -> modules and
shapes (``bind``) -> the plan IR and its passes (``compile``) -> execution (``runtime``) -> the
commands (``app``), on the registries of ``kinds``, ``zoo`` and ``data``.
"""
__version__ = "0.1.0"
