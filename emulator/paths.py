"""Where the kit's own files are: the one module that knows the repository's layout.

The example handler (`lambda/`), the example Terraform (`terraform/`) and `compose.yaml` sit at the top
of the repository, beside this package; everything else asks here for them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
LAMBDA_DIR = REPO / "lambda"
HANDLER_FILE = LAMBDA_DIR / "index.py"
TERRAFORM_DIR = REPO / "terraform"
COMPOSE_FILE = REPO / "compose.yaml"
