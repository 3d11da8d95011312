"""The resolved knowledge-transfer graph: plain typed records, names checked, shorthands expanded."""
from .build import ENSEMBLE_NETWORKS, ENSEMBLE_PATHS, build_graph, load_graph
from .document import Document
from .ids import AdapterId, AggregatorId, ModuleId, RegressorId, SegmentId, by_name, network_of
from .records import ALL, LABEL, Aggregator, CrossMapping, Ensemble, KTGraph, Link, Network, Path, Ref, RunWeights, Stage

__all__ = ["ALL", "ENSEMBLE_NETWORKS", "ENSEMBLE_PATHS", "LABEL", "AdapterId", "Aggregator", "AggregatorId",
           "CrossMapping", "Document", "Ensemble", "KTGraph", "Link", "ModuleId", "Network", "Path", "Ref", "RegressorId",
           "RunWeights", "SegmentId", "Stage", "build_graph", "by_name", "load_graph", "network_of"]
