"""The CPU demo behind ``tools/run_demo.py`` and the image demo script."""
