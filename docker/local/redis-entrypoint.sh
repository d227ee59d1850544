#!/bin/sh
# As the official image: `redis-server [options]` with no config file listens on all interfaces
# with protected mode off (otherwise Redis refuses clients from other containers).
set -e
if [ "$1" = "redis-server" ]; then
    shift
    exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
