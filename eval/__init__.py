"""`distill eval`: accuracy, fidelity and speed of every model and artifact on its runtime, with CI
gates. The stage's `run` is in stage.py; its settings in config.py."""
