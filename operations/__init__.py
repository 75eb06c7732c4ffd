"""The scheduling domain: pure Python, no I/O.

Free time is computed as a pipeline of small functions over sorted interval lists
(see ``availability.py``); FHIR JSON is turned into the model in ``parameters.py``.
"""
