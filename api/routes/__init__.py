"""Route modules, one per resource. `api.app` collects their `routes` lists."""
