"""On-disk state shared by the deployables: how a SQLite store file is opened and written."""
