"""The composition root: the command line, the settings and the Celery app. Nothing imports this package."""
