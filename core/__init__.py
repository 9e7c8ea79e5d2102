"""Shared ground: settings, database, tenancy, errors, ids. Imports third-party libraries only."""
