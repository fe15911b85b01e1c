# Sourced by .ci/run: start a throw-away PostgreSQL cluster (Debian's postgresql package) on port
# 5433 and export CSREFINE_TEST_POSTGRES_URL; on any failure say so loudly and leave it unset
# (the PostgreSQL history tests then skip with the reason). The server stops when the shell exits.
start_test_postgres() {
  local port=${CSREFINE_CI_PG_PORT:-5433} bin data run_as=()
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || return 1
  fi
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  data=$(mktemp -d /tmp/csrefine-ci-pg.XXXXXX) || return 1
  if [ "$(id -u)" = 0 ]; then  # initdb refuses root: run the server as postgres
    chown postgres "$data" && run_as=(su postgres -s /bin/sh -c)
  else
    run_as=(sh -c)
  fi
  "${run_as[@]}" "$bin/initdb -D $data -A trust -U postgres" >"$data.initdb.log" 2>&1 || return 1
  "${run_as[@]}" "$bin/pg_ctl -D $data -l $data/server.log -w -o '-p $port -k $data -c listen_addresses=127.0.0.1' start" \
    >/dev/null || return 1
  CSREFINE_PG_STOP=("${run_as[@]}" "$bin/pg_ctl -D $data -m fast stop")
  CSREFINE_PG_DATA=$data
  # stop the server and clean up on exit, keeping the script's own exit status
  trap 'rc=$?; "${CSREFINE_PG_STOP[@]}" >/dev/null 2>&1; rm -rf "$CSREFINE_PG_DATA" "$CSREFINE_PG_DATA.initdb.log"; exit $rc' EXIT
  "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres \
    -c "CREATE USER csrefine PASSWORD 'csrefine'" -c "CREATE DATABASE csrefine_test OWNER csrefine" \
    || return 1
  export CSREFINE_TEST_POSTGRES_URL="postgresql+psycopg://csrefine:csrefine@127.0.0.1:$port/csrefine_test"
}
if ! start_test_postgres; then
  echo "########################################################################"
  echo "WARNING: could not start PostgreSQL: the PostgreSQL history tests will be SKIPPED"
  echo "########################################################################"
fi
