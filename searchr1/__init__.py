"""Reproduce Search-R1: a library with no Prefect imports; flows/ and tasks/ orchestrate it."""

__version__ = "0.1.0"
