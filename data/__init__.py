"""Record types, sharded resumable dataset storage, corpus readers and text utilities.

This package imports nothing else of ours: every stage builds on it.
"""
