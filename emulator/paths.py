"""Where the kit's own files are: the one module that knows the layout.

The example handler (`lambda/`), the example Terraform (`terraform/`) and `compose.yaml` sit at the top
of the repository, beside this package. A wheel carries a copy of them as package data under
`emulator/example/` (setup.py makes it), so an installed kit finds them whatever the current
directory is: the copy when it exists, else the checkout around the package (an editable install).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The repository, when the package runs from a checkout (tests, stage and bench need one).
REPO = PACKAGE.parent
SHIPPED_EXAMPLE = PACKAGE / "example"
EXAMPLE_ROOT = SHIPPED_EXAMPLE if SHIPPED_EXAMPLE.is_dir() else REPO
LAMBDA_DIR = EXAMPLE_ROOT / "lambda"
HANDLER_FILE = LAMBDA_DIR / "index.py"
TERRAFORM_DIR = EXAMPLE_ROOT / "terraform"
COMPOSE_FILE = EXAMPLE_ROOT / "compose.yaml"
