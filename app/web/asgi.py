"""ASGI entry points for uvicorn, built from the environment: ``app.web.asgi:app`` (the public
listener) and ``app.web.asgi:management`` (the management listener, same state)."""

from app.config import Settings
from app.web.app import create_app

app = create_app(Settings.from_env())
management = app.state.management_app
