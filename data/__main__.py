"""`python -m distill.data PATH`: print where a bundled asset is installed, for tools that take a
file, such as `accelerate launch --config_file "$(python -m distill.data accelerate/ddp.yaml)"`."""

import sys

from . import asset

if len(sys.argv) != 2 or not asset(sys.argv[1]).exists():
    raise SystemExit("usage: python -m distill.data accelerate/ddp.yaml (a file under distill/data/)")
print(asset(sys.argv[1]))
