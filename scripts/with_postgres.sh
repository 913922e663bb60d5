#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster: initdb in a temporary directory as an
# unprivileged user (postgres when run as root), a free port on 127.0.0.1, password auth
# (scram-sha-256), fsync off; the command gets QWEN_TEST_POSTGRES=postgres://…/qwen_test and
# QWEN_TEST_POSTGRES_PASSWORD_FILE, QWEN_TEST_POSTGRES_CA (the CA of its TLS certificate) and QWEN_TEST_POSTGRES_CTL (pg_ctl on it: stop, start, restart); the cluster is stopped and removed when it ends, however
# it ends. PostgreSQL comes from Debian's packages (make deps installs them when missing).
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "with_postgres: PostgreSQL's server is not installed (sudo apt-get install postgresql, or make deps)" >&2
  exit 1
fi
dir=$(mktemp -d /tmp/qwen-pg.XXXXXX)
chmod 755 "$dir"
run=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$dir"
  run=(runuser -u postgres --)
fi
password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
printf '%s' "$password" > "$dir/password"
chmod 644 "$dir/password"
# TLS with a certificate from a throwaway CA (for localhost and 127.0.0.1): the tests connect
# with sslmode=verify-full against QWEN_TEST_POSTGRES_CA as well as without TLS.
(
  cd "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=qwen-serve test CA" -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt 2>/dev/null
  chmod 600 server.key ca.key
  rm -f server.csr san.ext
)
if [ ${#run[@]} -gt 0 ]; then chown postgres "$dir/server.key" "$dir/server.crt"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
"${run[@]}" "$bindir/initdb" -D "$dir/data" -U qwen --auth=scram-sha-256 --pwfile="$dir/password" --no-sync >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
"${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "$opts" start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
PGPASSWORD="$password" "$bindir/psql" -h 127.0.0.1 -p "$port" -U qwen -d postgres -qc 'CREATE DATABASE qwen_test'
# Tests stop and restart the server with this (pg_ctl restart keeps the options above).
# `ctl stop -m fast`, `ctl start`, `ctl restart -m fast`: the same options and log file each time.
cat > "$dir/ctl" <<CTL
#!/bin/sh
action=\$1; shift
case "\$action" in
  start|restart) exec ${run[*]} "$bindir/pg_ctl" -D "$dir/data" -w -l "$dir/server.log" -o "$opts" "\$action" "\$@" >/dev/null ;;
  *) exec ${run[*]} "$bindir/pg_ctl" -D "$dir/data" -w "\$action" "\$@" >/dev/null ;;
esac
CTL
chmod 755 "$dir/ctl"
echo "with_postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)"
export QWEN_TEST_POSTGRES="postgres://qwen:$password@127.0.0.1:$port/qwen_test?sslmode=disable"
export QWEN_TEST_POSTGRES_PASSWORD_FILE="$dir/password"
export QWEN_TEST_POSTGRES_CTL="$dir/ctl"
export QWEN_TEST_POSTGRES_CA="$dir/ca.pem"
"$@"
