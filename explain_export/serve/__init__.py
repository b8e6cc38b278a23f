"""Serving an exported explainer (Ray Serve app in :mod:`.app`); importing this imports no Ray."""
