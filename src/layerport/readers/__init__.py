"""Readers of checkpoint formats that need more than a library call to read safely.

``layerport.weights`` dispatches to them by a file's content; each returns a
file's tensors by name, in the file's order, and runs no code from the file.
"""
