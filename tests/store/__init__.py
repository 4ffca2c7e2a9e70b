"""Tests of mssante.operator.store, on SQLite and PostgreSQL (see tests/conftest.py)."""
