"""The timestamp service: signs a freshness statement every minute (TUF's timestamp role)."""
