"""The PostgreSQL fixtures of the catalog tests, for runs against a shared catalog."""

from tests.catalog.conftest import postgres_admin_url, postgres_url

__all__ = ["postgres_admin_url", "postgres_url"]
