#!/usr/bin/env bash
# Starts moto's server, which speaks the Amazon SQS API (and S3), on
# 127.0.0.1:19325 for Ferry's SQS tests, if nothing listens there. Idempotent.
# It runs through scripts/moto_sqs.py, which makes moto's ReceiveMessage
# atomic per queue as SQS's is (the port differs from the one an unwrapped
# moto used to take, so a stale one left running is not mistaken for it).
#
# moto comes from PyPI (installed with pip when missing); it keeps its queues
# in memory and accepts any access key.
set -u

host=127.0.0.1
port=19325
package='moto[server]'

up() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

up "$host" "$port" && exit 0

# moto.server needs the [server] extra (flask), not only moto.
if ! python3 -c 'import moto.server' 2>/dev/null; then
  echo "sqs: installing $package"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$package" ||
    { echo "sqs: could not install $package" >&2; exit 1; }
fi

echo "sqs: starting moto on $host:$port"
log=${TMPDIR:-/tmp}/ferry-moto.log
setsid nohup python3 "$(dirname "$0")/moto_sqs.py" -H "$host" -p "$port" >"$log" 2>&1 </dev/null &

for _ in $(seq 1 120); do
  up "$host" "$port" && exit 0
  sleep 0.5
done
echo "sqs: moto did not come up on $host:$port (log: $log)" >&2
exit 1
