#!/bin/sh
# Side-by-side baseline: Postfix (Debian package `postfix`) relaying 4 KB
# messages to the benchmark's sink, measured by the same client as
# smtp-relay. A private instance: config, queue and data under a temp dir,
# listening on 127.0.0.1 only, ports chosen here; stopped and removed at the
# end. Needs root (Postfix drops to its `postfix` user) and
# target/release/examples/bench_relay (cargo xtask bench relay builds it).
#
# usage: smtp-relay/bench/postfix.sh [MESSAGES]
set -eu
MESSAGES=${1:-3000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH="$ROOT/target/release/examples/bench_relay"
command -v postfix >/dev/null || { echo "SKIP postfix baseline: postfix not installed (apt-get install -y postfix)"; exit 0; }
[ -x "$BENCH" ] || { echo "build first: cargo build --release -p smtp-relay --example bench_relay"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PF_PORT=$(free_port)
SINK_PORT=$(free_port)
DIR=$(mktemp -d /tmp/postfix-bench.XXXXXX)
chmod 755 "$DIR"
mkdir -p "$DIR/conf" "$DIR/queue" "$DIR/data"
chown postfix "$DIR/data"
cleanup() {
    postfix -c "$DIR/conf" stop >/dev/null 2>&1 || true
    sleep 1
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
cat > "$DIR/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $DIR/queue
data_directory = $DIR/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.example
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = example.org
relayhost = [127.0.0.1]:$SINK_PORT
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
smtp_tls_security_level = none
maillog_file = /dev/stdout
default_process_limit = 100
smtpd_client_connection_rate_limit = 0
smtpd_client_connection_count_limit = 0
biff = no
CF
cat > "$DIR/conf/master.cf" <<CF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CF
postfix -c "$DIR/conf" check
postfix -c "$DIR/conf" start
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$PF_PORT),1)" 2>/dev/null && break
    sleep 0.2
done
echo "postfix $(postconf -d -h mail_version) on 127.0.0.1:$PF_PORT, relaying to the sink on 127.0.0.1:$SINK_PORT"
# BENCH_JSON=FILE: also write the figures there (cargo xtask bench relay does).
"$BENCH" --mta "127.0.0.1:$PF_PORT" --sink-port "$SINK_PORT" --messages "$MESSAGES" \
    --name "postfix $(postconf -d -h mail_version)" ${BENCH_JSON:+--json "$BENCH_JSON"}
