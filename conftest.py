"""Makes `pytest cases` use the plugin from this working tree even when the package is not installed.

The entry point is named "quant_harness.plugin" too, so when the package is installed this line is a no-op.
"""

pytest_plugins = ["quant_harness.plugin"]
