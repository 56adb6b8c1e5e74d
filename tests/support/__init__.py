"""Helpers shared by the test suite and the scripts in scripts/."""
