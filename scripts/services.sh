#!/usr/bin/env bash
# Starts the local services Ferry's tests use, if they are not running.
# Each start command is harmless when the service already runs.
# (Ferry's own copy of ../shared/SERVICES.md, for the services it needs.)
set -u

up() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name host port
  for _ in $(seq 1 120); do
    up "$2" "$3" && return 0
    sleep 0.5
  done
  echo "services: $1 did not come up on $2:$3" >&2
  return 1
}

status=0
if ! up 127.0.0.1 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL 127.0.0.1 5432 || status=1

if ! up 127.0.0.1 4222; then
  echo "services: starting NATS with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
fi
wait_for NATS 127.0.0.1 4222 || status=1

if ! up 127.0.0.1 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
wait_for Redis 127.0.0.1 6379 || status=1

if ! up 127.0.0.1 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_for RabbitMQ 127.0.0.1 5672 || status=1

if ! up 127.0.0.1 3306; then
  echo "services: starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
wait_for MariaDB 127.0.0.1 3306 || status=1

"$(dirname "$0")/kafka.sh" || status=1
"$(dirname "$0")/sqs.sh" || status=1

exit $status
