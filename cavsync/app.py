"""The API built from the `CAVSYNC_*` settings (what `cavsync serve` runs):

uvicorn --factory cavsync.app:create_app
"""

from __future__ import annotations

from fastapi import FastAPI

from cavsync.settings import Settings
from model.media import use_ffmpeg
from service.app import create_app as create_service


def build_app(settings: Settings) -> FastAPI:
    """The service over `settings`; with a broker URL, index jobs are published to the Celery workers."""
    use_ffmpeg(settings.ffmpeg)
    publish = None
    if settings.broker_url:
        from cavsync.worker import make_app, publisher

        publish = publisher(make_app(settings))
    return create_service(settings.service_config(), publish)


def create_app() -> FastAPI:
    """uvicorn's factory: the settings of the environment."""
    return build_app(Settings())
