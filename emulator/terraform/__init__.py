"""Terraform glue: running terraform (or tflocal) against the AWS API emulator (workspace) and reading back
what an apply created (applied).

It imports only the kit's shared modules (errors, paths).
"""
