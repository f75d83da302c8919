"""Lianfang's deployables (gateway, importers, router, hub, console) and their shared kernel."""
