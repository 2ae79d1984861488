"""Stochastic computation graphs: ``Graph`` (graph.py), dependency tracking (dependencies.py) and the
composition of node terms into one loss (compose.py)."""

from gradest.graph.graph import Graph

__all__ = ["Graph"]
