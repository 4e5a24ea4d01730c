"""ASGI entry point for uvicorn: ``app.web.asgi:app`` built from the environment."""

from app.config import Settings
from app.web.app import create_app

app = create_app(Settings.from_env())
