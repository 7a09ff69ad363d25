"""pytest's own fixture for running pytest (test_pinning.py runs this suite on a changed handler)."""

pytest_plugins = ["pytester"]
