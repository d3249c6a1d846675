"""`distill train`: a dense student learns from the teacher (SFT, logit distillation, on-policy
distillation). The stage's `run` is in stage.py; its settings in config.py."""
