"""Distil a large reasoning model into small models for laptops and Raspberry Pis."""

__version__ = "0.1.0"
