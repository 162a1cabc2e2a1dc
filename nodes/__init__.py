"""ComfyUI adapters for the ``ddcolor`` engine.

Imported only relatively, as ``<pack>.nodes``: ComfyUI has a top-level module
named ``nodes`` of its own, which this package must never shadow.
"""
