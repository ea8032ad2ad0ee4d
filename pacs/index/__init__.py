"""The index: patients, studies, series and instances in SQLite or PostgreSQL."""
