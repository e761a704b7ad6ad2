"""The CLI's commands, by what they work on; `cli.py` is the entry point that loads them in order."""
