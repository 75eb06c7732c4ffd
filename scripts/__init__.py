"""Developer scripts: `make run` (run_local.py) and the sample clinic it loads."""
