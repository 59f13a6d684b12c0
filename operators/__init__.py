"""Pipeline stages as plain classes: cheap ``__init__(cfg)``, ``setup()``, ``__call__(batch) -> batch``.

Nothing here imports Ray, so every operator runs and tests without it.
"""
