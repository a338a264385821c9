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

# CDC reads PostgreSQL's log through logical replication: wal_level must be
# `logical` (a restart), with room for the tests' slots.
pg_logical() {
  [ "$(psql -h 127.0.0.1 -U postgres -Atc 'SHOW wal_level' 2>/dev/null)" = logical ]
}
if ! pg_logical; then
  echo "services: restarting PostgreSQL with wal_level=logical"
  conf="/etc/postgresql/$(ls /etc/postgresql | head -n1)/main/conf.d"
  mkdir -p "$conf"
  cat >"$conf/95-ferry-cdc.conf" <<'CONF'
# Written by Ferry's scripts/services.sh: logical replication for CDC.
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
CONF
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart || true
  wait_for PostgreSQL 127.0.0.1 5432 || status=1
  pg_logical || { echo "services: PostgreSQL still runs without wal_level=logical" >&2; status=1; }
fi

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

# CDC reads MariaDB's row-based binary log: switched on in my.cnf, and the
# server restarted if it runs without it.
binlog_on() {
  [ "$(mysql -uroot -h127.0.0.1 -Nse "SELECT CONCAT(@@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)" 2>/dev/null)" = ONROWFULLFULL ]
}
if ! binlog_on; then
  echo "services: restarting MariaDB with a row-based binary log"
  if ! grep -q "ferry-cdc" /etc/mysql/my.cnf 2>/dev/null; then
    cat >>/etc/mysql/my.cnf <<'CONF'

# Written by Ferry's scripts/services.sh (ferry-cdc): the binary log CDC reads.
[mysqld]
log-bin = mariadb-bin
server-id = 1
binlog-format = ROW
binlog-row-image = FULL
binlog-row-metadata = FULL
binlog-expire-logs-seconds = 86400
max-binlog-size = 256M
CONF
  fi
  mysqladmin -uroot -h127.0.0.1 shutdown 2>/dev/null || true
  # Wait for the old process to end (start-stop-daemon does nothing while it runs).
  for _ in $(seq 1 120); do pgrep -x mariadbd >/dev/null || break; sleep 0.5; done
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for MariaDB 127.0.0.1 3306 || status=1
  binlog_on || { echo "services: MariaDB still runs without a row-based binary log" >&2; status=1; }
fi

# SFTP tests run a private OpenSSH server of their own (ferry-testkit's
# PrivateSshd, on a loopback port): the server must be installed, not running.
if [ ! -x /usr/sbin/sshd ]; then
  echo "services: installing openssh-server (for the SFTP tests)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server >/dev/null; }; } ||
    { echo "services: could not install openssh-server" >&2; status=1; }
fi

# The console's browser tests drive Debian's Chromium headless through
# chromedriver (WebDriver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "services: installing chromium and chromium-driver (for the console's browser tests)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >/dev/null; }; } ||
    { echo "services: could not install chromium and chromium-driver" >&2; status=1; }
fi

"$(dirname "$0")/kafka.sh" || status=1
# moto serves S3 (the batch tests' buckets) on the same port as SQS.
"$(dirname "$0")/sqs.sh" || status=1

exit $status
