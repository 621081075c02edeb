"""The DuckDB store (torch-free): schema, idempotent ingestion, tidy queries."""

from kdgrid.store.db import Store, default_db_path, open_store

__all__ = ["Store", "default_db_path", "open_store"]
