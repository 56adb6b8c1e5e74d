"""Scripts run from the checkout root; those that start processes run as modules (`python -m scripts.scale_out`) and use the harness in tests/support/."""
