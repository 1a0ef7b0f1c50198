"""Fault tests: the soak (`python -m tests.fault.soak`, `make soak`) and its short version."""
