"""`distill generate`: a teacher samples verified reasoning traces. The stage's `run` is in
stage.py; its settings in config.py."""
