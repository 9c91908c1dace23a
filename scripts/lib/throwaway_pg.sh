# Throwaway PostgreSQL 15 for the demo and the benchmarks. Source this file, then:
#   pg_start DIR PORT [extra postgres -c options...]   initdb into DIR, listen on 127.0.0.1:PORT
#   pg_stop DIR
#   pg_as CMD...   run CMD as the user that owns the cluster (postgres when we are root)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

pg_as() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_start() {
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
  pg_as "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log"; return 1; }
  local opts="-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir"
  opts="$opts -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  for o in "$@"; do opts="$opts -c $o"; done
  pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w start >/dev/null ||
    { cat "$dir/postgres.log"; return 1; }
}

pg_stop() {
  local dir=$1
  [ -d "$dir/data" ] && pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
