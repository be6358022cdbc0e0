"""Command-line tools; a package only so that tests can import helpers.

The scripts run as ``python tools/<name>.py``; nothing here is installed.
"""
