"""`python -m distill ...` runs the CLI (also under `accelerate launch -m distill`)."""

from distill.cli import main

main()
