"""The station: the one composition root (build.py) and the one operations layer (ops/)."""
