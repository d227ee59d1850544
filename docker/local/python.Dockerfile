# A stand-in for python:3.x-slim built from Debian's packages only (for machines with no image
# registry; see docker/local/build.sh): Debian's Python in a venv that is first on PATH, so that
# `pip install` in docker/Dockerfile works as it does on the official image (PEP 668 forbids pip
# into Debian's own Python).
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH \
    LANG=C.UTF-8
CMD ["python3"]
