"""Thin shim of the design card's top-level `cli.py`: the CLI lives in `distill/cli.py`, so that
`python -m distill` runs it and a user's own `cli.py` cannot shadow it."""

from distill.cli import app, main  # noqa: F401

if __name__ == "__main__":
    main()
