"""Waystation: an edge agent that runs model turns on this host and parks network work offline."""

__version__ = "0.1.0"
