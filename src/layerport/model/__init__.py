"""Whole models: registered layers composed from a model file (issue 23)."""
