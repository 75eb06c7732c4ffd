"""Benchmarks: ``python -m bench`` runs the end-to-end one (``bench/__main__.py``,
docs/performance.md); ``python bench/find.py`` the ``$find`` engine alone, without I/O."""
