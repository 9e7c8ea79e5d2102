"""The HTTP API: a Starlette app built by `api.app.create_app(settings)`."""
