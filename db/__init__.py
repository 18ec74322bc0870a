"""Database layer: typed ORM models, the one session factory, versioned schema, shared queries."""

from db.session import Database, data_dir, model_folder, models_dir, open_database, resolve_db_url

__all__ = ["Database", "data_dir", "model_folder", "models_dir", "open_database", "resolve_db_url"]
