"""Connectivity: the monitor that decides online/offline/portal (probe, OS events, forced mode)."""
