"""The real-AWS stage (`nox -s aws`): deploy the kit's Terraform, run tests/aws, compare, destroy."""
