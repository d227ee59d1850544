"""cavsync.service: the REST API (`create_app(ServiceConfig)`); built by the `cavsync` composition root."""
