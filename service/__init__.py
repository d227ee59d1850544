"""cavsync.service: the REST API and the `cavsync` command line."""
