"""Shared core: configs, errors, atomic I/O, stage records, prompts, answers, progress."""
