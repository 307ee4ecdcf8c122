#!/bin/bash
# Executable identity against root in a real Docker container (issue 12): `exe = "/usr/bin/curl"`
# matches the file the image has at that path, not the path string. Containers run as root with
# Docker's default capabilities (CAP_SYS_CHROOT, CAP_NET_RAW; no CAP_SYS_ADMIN) and a writable
# root filesystem, as a plain `docker run` gives them. Judged at the receiver: the peer logs every
# accepted connection and the request line, which carries a token unique to each attempt.
#
#   1. the image's /usr/bin/curl reaches the peer; python3 does not (container-wide rules)
#   2. copies of curl at /tmp/curl and /opt/bin/curl do not; a symlink to the real one does
#   3. curl overwritten in place with python3: denied; `policyd reload` re-resolves the path, and
#      the new file it names is allowed from then on (the design); with a sha256 pin of the
#      image's curl it stays denied after the reload, and status says why
#   4. chroot into a copied tree with its own /usr/bin/curl: denied; also when PID 1 itself
#      chrooted into it (the resolver keeps to the container's original root)
#   5. a bind mount over /usr/bin/curl: refused without CAP_SYS_ADMIN (denied if it worked)
#   6. `policyd status`: the writable root filesystems, and a --read-only container as read-only
. /mnt/share/lib/vmtest.sh

NET=contain-exe
SUBNET=198.18.252.0/24
PEER_IP=198.18.252.10
T=/opt/contain-test              # helper scripts, bind-mounted read-only into the containers
PLOGDIR=/var/tmp/exe-peer        # the peer's log, bind-mounted read-write into the peer only
PLOG=$PLOGDIR/peer.log
IMG=$CONTAIN_TEST_IMAGE
OUT=$CONTAIN_SHARE/out

step "contain under systemd (bpf-loader, resolver; policyd once the sha256 pin is known)"
install_contain
mkdir -p $T $PLOGDIR /etc/contain
getent group contain >/dev/null || groupadd --system contain

# The peer: accepts on 8080 and logs each connection and its first request line.
cat >$T/logsrv.py <<'EOF'
import socket, sys, threading, time
port, path = int(sys.argv[1]), sys.argv[2]
log = open(path, "a", buffering=1)
lock = threading.Lock()
def say(msg):
    with lock:
        log.write(f"{msg}\n")
def answer(conn, addr):
    with conn:
        conn.settimeout(5)
        try:
            line = conn.recv(2048).split(b"\r\n", 1)[0].decode(errors="replace")
            say(f"req {addr[0]} {line}")
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError as e:
            say(f"err {addr[0]} {e}")
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(128)
say("ready")
while True:
    conn, addr = s.accept()
    say(f"accept {addr[0]}:{addr[1]} {time.time():.3f}")
    threading.Thread(target=answer, args=(conn, addr), daemon=True).start()
EOF
# A client that sends the token as curl would: GET /TOKEN. Exits 0 only when the peer answered.
cat >$T/tok.py <<'EOF'
import errno, socket, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(f"GET /{token} HTTP/1.0\r\nHost: peer\r\n\r\n".encode())
        if not s.recv(64):
            raise OSError(errno.ECONNRESET, "no data")
except socket.timeout:
    print("timeout"); sys.exit(1)
except OSError as e:
    print(("denied:" if e.errno == errno.EPERM else "error:") + errno.errorcode.get(e.errno, str(e)))
    sys.exit(1)
print("ok")
EOF
# What `policyd status --json` says about one container: its ROOT FS, mode, or exe files.
cat >$T/st.py <<'EOF'
import json, subprocess, sys
what, name = sys.argv[1], sys.argv[2]
s = json.loads(subprocess.run(["policyd", "status", "--json"], capture_output=True, check=True).stdout)
for c in s["containers"]:
    if c["name"].lstrip("/") != name:
        continue
    if what == "rootfs":
        print({True: "read-only", False: "writable", None: "?"}[c.get("readonly_rootfs")])
    elif what == "mode":
        print(c["mode"])
    elif what == "exe":
        for e in c.get("executables", []):
            f = e.get("file")
            print(f"file {f['ino']} {f['ctime_sec']}.{f['ctime_nsec']:09d}" if f else f"none: {e.get('problem')}")
    sys.exit(0)
sys.exit(4)
EOF
chmod 644 $T/*.py
st() { python3 $T/st.py "$@" 2>&1 || true; }

check "start bpf-loader" systemd-run --unit=contain-bpf-loader -p Restart=always -p RestartSec=0.2 \
  /usr/local/bin/bpf-loader --attach-parent contain.slice
# The loader verifies its programs before it serves: 10-20 s under TCG,
# more while the host is busy.
check "loader socket" retry 300 0.2 test -S /run/contain/loader.sock
check "start resolver" systemd-run --unit=contain-resolver -p Restart=always -p RestartSec=0.2 \
  /usr/local/bin/resolver
check "resolver socket" retry 100 0.2 test -S /run/contain/resolver.sock
defer journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager -o cat \
  --output-fields=MESSAGE > $OUT/daemons.log

step "containers: peer, curler and pinned (writable root, default caps), ro (--read-only)"
docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f peer curler pinned ro chrooter
check "network $NET" docker network create --subnet "$SUBNET" "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "peer (logging server on 8080)" run --name peer --ip $PEER_IP -v $PLOGDIR:/log "$IMG" \
  python3 $T/logsrv.py 8080 /log/peer.log
check "curler" run --name curler "$IMG" sleep 3600
check "pinned" run --name pinned "$IMG" sleep 3600
check "ro (--read-only)" run --name ro --read-only "$IMG" sleep 3600
# PID 1 copies curl into /jail and chroots itself there: the resolver must not take the jail,
# the root PID 1 has now, for the container's root.
check "chrooter (PID 1 chroots into /jail, which has its own /usr/bin/curl)" run --name chrooter "$IMG" \
  sh -c 'set -e; mkdir -p /jail/usr/bin /jail/bin /jail/usr/lib /jail/etc
    cp /usr/bin/curl /jail/usr/bin/curl; cp /bin/busybox /jail/bin/busybox
    for d in /lib /lib64 /usr/lib/x86_64-linux-gnu; do [ -e $d ] && cp -a $d /jail$(dirname $d)/; done
    touch /ready; exec chroot /jail /bin/busybox sleep 3600'
check "the peer listens" retry 60 0.5 grep -q '^ready' $PLOG

caps=$(docker exec curler sh -c 'id -u; grep CapEff /proc/self/status' 2>&1 || true)
info "curler: uid and CapEff: $(tr '\n' ' ' <<<"$caps")"
eff=$((16#$(awk '/CapEff/ {print $2}' <<<"$caps")))
[[ $(head -n1 <<<"$caps") == 0 && $((eff >> 18 & 1)) == 1 && $((eff >> 13 & 1)) == 1 && $((eff >> 21 & 1)) == 0 ]] \
  && pass "curler runs as root with CAP_SYS_CHROOT and CAP_NET_RAW, without CAP_SYS_ADMIN" \
  || fail "curler's identity/capabilities are not Docker's defaults as root: $caps"

SHA=$(docker exec curler sha256sum /usr/bin/curl | awk '{print $1}')
info "sha256 of the image's /usr/bin/curl: $SHA"
check "the sha256 is 64 hex digits" bash -c "[[ $SHA =~ ^[0-9a-f]{64}\$ ]]"
cat >/etc/contain/policy.toml <<EOF
mode = "enforce"
unknown_container = "deny"
allow_loopback = true

[[policy]]
name = "curler"
select = { name = "curler" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]

[[policy]]
name = "pinned"
select = { name = "pinned" }
[[policy.process]]
exe = "/usr/bin/curl"
sha256 = "$SHA"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]

[[policy]]
name = "readonly"
select = { name = "ro" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]

[[policy]]
name = "chrooter"
select = { name = "chrooter" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]
EOF
cp /etc/contain/policy.toml $OUT/policy.toml
check "policy is valid" policyd check /etc/contain/policy.toml
check "start policyd" systemd-run --unit=contain-policyd -p Restart=always -p RestartSec=0.2 \
  /usr/local/bin/policyd daemon --policy /etc/contain/policy.toml
check "policyd socket" retry 100 0.2 test -S /run/contain/policyd.sock
converged() {
  local c
  for c in curler pinned ro; do
    [[ $(st mode $c) == enforce && $(st exe $c) == file* ]] || return 1
  done
}
check "policyd enforces on curler, pinned and ro, each with its curl resolved" retry 80 0.25 converged
policyd status >$OUT/status-start.txt 2>&1 || true
info "policyd status:"; sed 's/^/    /' $OUT/status-start.txt

# ---- helpers: one attempt = one token; judged by the peer's log -----------------------------
N=0
accepts() { grep -c '^accept ' $PLOG || true; }
# attempt CONTAINER SHELLCMD: runs SHELLCMD (sh -c) in the container with $URL and $TOK set.
attempt() {
  local c=$1 cmd=$2 before
  N=$((N + 1)); TOK=tok$N-$c; before=$(accepts); RC=0
  OUT_=$(docker exec -e TOK=$TOK -e URL=http://$PEER_IP:8080/$TOK -e PEER=$PEER_IP "$c" sh -c "$cmd" 2>&1) || RC=$?
  sleep 0.3
  NEW=$(( $(accepts) - before ))
  SEEN=0; grep -q "GET /$TOK " $PLOG && SEEN=1
  return 0
}
# allowed DESC CONTAINER SHELLCMD: the command succeeds and the peer logged its token
allowed() {
  attempt "$2" "$3"
  if [[ $RC -eq 0 && $SEEN -eq 1 ]]; then pass "$1 (the peer logged GET /$TOK)"
  else fail "$1: wanted allowed, got exit $RC, peer saw the token: $SEEN, new connections: $NEW"
    printf '%s\n' "$OUT_" | tail -n5 | sed 's/^/    /'; fi
}
# denied DESC CONTAINER SHELLCMD: the command fails and no connection reached the peer
denied() {
  attempt "$2" "$3"
  if [[ $RC -ne 0 && $SEEN -eq 0 && $NEW -eq 0 ]]; then
    pass "$1 (exit $RC, nothing reached the peer: $(tail -n1 <<<"$OUT_"))"
  else fail "$1: wanted denied, got exit $RC, peer saw the token: $SEEN, new connections: $NEW"
    printf '%s\n' "$OUT_" | tail -n5 | sed 's/^/    /'; fi
}
CURL='/usr/bin/curl -sS --max-time 5 "$URL"'
TOKPY="$T/tok.py \$PEER 8080 \$TOK"   # \$PEER and \$TOK expand in the container
# ino and ctime of a file in a container, as its own stat says
fstat() { docker exec "$1" python3 -c 'import os, sys; s = os.stat(sys.argv[1]); print(f"{s.st_ino} {s.st_ctime_ns // 10**9}.{s.st_ctime_ns % 10**9:09d}")' "$2" 2>&1 || true; }

step "1. the image's /usr/bin/curl is allowed, other programs are not"
check_output "status names the file curler's own stat sees at /usr/bin/curl" "file $(fstat curler /usr/bin/curl)" \
  python3 $T/st.py exe curler
allowed "curler: /usr/bin/curl reaches peer:8080" curler "$CURL"
allowed "curler: curl found through PATH is the same file" curler 'curl -sS --max-time 5 "$URL"'
denied "curler: python3 (container-wide rules: nothing)" curler "python3 $TOKPY"
denied "curler: busybox wget" curler 'timeout 5 wget -q -O- "$URL"'
allowed "pinned: /usr/bin/curl (content matches the sha256 pin)" pinned "$CURL"
allowed "ro: /usr/bin/curl" ro "$CURL"

step "2. copies of curl: a renamed-path copy and a same-named copy elsewhere"
check "curler: copies at /tmp/curl and /opt/bin/curl run (curl --version)" docker exec curler sh -c \
  'cp /usr/bin/curl /tmp/curl && mkdir -p /opt/bin && cp /usr/bin/curl /opt/bin/curl && /tmp/curl --version >/dev/null && /opt/bin/curl --version >/dev/null'
denied "curler: /tmp/curl" curler '/tmp/curl -sS --max-time 5 "$URL"'
denied "curler: /opt/bin/curl" curler '/opt/bin/curl -sS --max-time 5 "$URL"'
denied "curler: /opt/bin/curl run as 'curl' from PATH=/opt/bin" curler 'PATH=/opt/bin curl -sS --max-time 5 "$URL"'
allowed "curler: a symlink /tmp/link -> /usr/bin/curl is the same file" curler \
  'ln -sf /usr/bin/curl /tmp/link && /tmp/link -sS --max-time 5 "$URL"'

step "4. chroot (CAP_SYS_CHROOT) into a copied tree with its own /usr/bin/curl"
check "curler: /jail holds a copy of curl and its libraries; chroot /jail /usr/bin/curl runs" \
  docker exec curler sh -c 'set -e; mkdir -p /jail/usr/bin /jail/usr/lib /jail/etc /jail/tmp
    cp /usr/bin/curl /jail/usr/bin/curl
    for d in /lib /lib64 /usr/lib/x86_64-linux-gnu; do [ -e $d ] && cp -a $d /jail$(dirname $d)/; done
    [ -e /etc/ld.so.cache ] && cp /etc/ld.so.cache /jail/etc/ || true
    chroot /jail /usr/bin/curl --version >/dev/null'
jail=$(fstat curler /jail/usr/bin/curl); real=$(fstat curler /usr/bin/curl)
info "curler: /usr/bin/curl is ino/ctime $real, /jail/usr/bin/curl is $jail"
denied "curler: chroot /jail /usr/bin/curl" curler 'chroot /jail /usr/bin/curl -sS --max-time 5 "$URL"'
allowed "curler: the real /usr/bin/curl still reaches the peer after the chroot attempt" curler "$CURL"

step "4b. a container whose PID 1 chrooted itself into a tree with its own /usr/bin/curl"
check "chrooter: PID 1 is chrooted in /jail" retry 40 0.5 \
  bash -c '[[ $(docker exec chrooter readlink /proc/1/root 2>/dev/null) == /jail ]]'
cjail=$(fstat chrooter /jail/usr/bin/curl); creal=$(fstat chrooter /usr/bin/curl)
info "chrooter: /usr/bin/curl is $creal, /jail/usr/bin/curl is $cjail; status says: $(st exe chrooter | tr '\n' ' ')"
cst=$(st exe chrooter)
[[ -n $cst && $cst != "file $cjail" ]] && pass "status: chrooter's curl is not the jail's copy ($cst)" \
  || fail "status: chrooter's /usr/bin/curl resolved to the jail's copy or nothing: '$cst'"
denied "chrooter: chroot /jail /usr/bin/curl" chrooter 'chroot /jail /usr/bin/curl -sS --max-time 5 "$URL"'
check "chrooter: a process in the container's own root (docker exec -d sleep)" docker exec -d chrooter sleep 600
check "policyd reload (resolves chrooter's path through that process)" policyd reload
check_output "status: chrooter's /usr/bin/curl is the image's file in the container's own root" "file $creal" \
  python3 $T/st.py exe chrooter
allowed "chrooter: the real /usr/bin/curl" chrooter "$CURL"
denied "chrooter: chroot /jail /usr/bin/curl, after the reload" chrooter \
  'chroot /jail /usr/bin/curl -sS --max-time 5 "$URL"'

step "5. bind mount over /usr/bin/curl (needs CAP_SYS_ADMIN, not in Docker's defaults)"
for how in plain unshare; do
  if [[ $how == plain ]]; then
    cmd='mount --bind /tmp/curl /usr/bin/curl && echo MOUNTED && exec /usr/bin/curl -sS --max-time 5 "$URL"'
  else
    cmd='unshare -m sh -c '\''mount --bind /tmp/curl /usr/bin/curl && echo MOUNTED && exec /usr/bin/curl -sS --max-time 5 "$URL"'\'''
  fi
  attempt curler "$cmd"
  if grep -q MOUNTED <<<"$OUT_"; then
    info "bind mount ($how) WORKED in curler; judging the mounted copy"
    if [[ $RC -ne 0 && $SEEN -eq 0 && $NEW -eq 0 ]]; then pass "curler: bind-mounted copy at /usr/bin/curl ($how) is denied"
    else fail "curler: bind-mounted copy at /usr/bin/curl ($how) reached the peer (exit $RC, seen $SEEN)"; fi
    docker exec curler umount /usr/bin/curl >/dev/null 2>&1 || true
  elif [[ $RC -ne 0 && $SEEN -eq 0 && $NEW -eq 0 ]]; then
    pass "curler: bind mount over /usr/bin/curl ($how) is refused: $(tail -n1 <<<"$OUT_")"
  else
    fail "curler: bind mount attempt ($how): exit $RC, seen $SEEN, new $NEW"; printf '%s\n' "$OUT_" | sed 's/^/    /'
  fi
done
check_output "curler: /usr/bin/curl is still the image's file" "$real" fstat curler /usr/bin/curl

step "3. overwrite /usr/bin/curl in place with python3"
for c in curler pinned; do
  before=$(fstat $c /usr/bin/curl)
  check "$c: cat /usr/bin/python3 > /usr/bin/curl" docker exec $c sh -c 'cat /usr/bin/python3 > /usr/bin/curl'
  after=$(fstat $c /usr/bin/curl)
  info "$c: /usr/bin/curl ino/ctime before $before, after $after (inode $([[ ${before%% *} == "${after%% *}" ]] && echo kept || echo changed))"
  [[ $before != "$after" ]] && pass "$c: the overwrite changed the file's identity (ctime)" \
    || fail "$c: ino/ctime unchanged by the overwrite ($after)"
done
check "curler: /usr/bin/curl now runs python" docker exec curler /usr/bin/curl -c 'import sys; print(sys.version)'
info "status before the reload (curler still lists the image's curl):"
python3 $T/st.py exe curler | sed 's/^/    /' || true
denied "curler: the overwritten /usr/bin/curl before any reload" curler "/usr/bin/curl $TOKPY"
denied "pinned: the overwritten /usr/bin/curl before any reload" pinned "/usr/bin/curl $TOKPY"
rc=0; reload_out=$(policyd reload 2>&1) || rc=$?
printf '%s\n' "$reload_out" | sed 's/^/    /'
[[ $rc -eq 0 ]] && pass "policyd reload (re-resolves every exe path)" || fail "policyd reload: exit $rc"
[[ $reload_out == *"pinned"*"is not what the sha256 pin says"* ]] \
  && pass "policyd reload warns that pinned's /usr/bin/curl is not the pinned content" \
  || fail "policyd reload did not print pinned's sha256 mismatch (the README lists it among the warnings; status shows it)"
policyd status >$OUT/status-after-reload.txt 2>&1 || true
info "policyd status after the reload:"; sed 's/^/    /' $OUT/status-after-reload.txt
check_output "status: curler's /usr/bin/curl is now the overwritten file" "file $(fstat curler /usr/bin/curl)" \
  python3 $T/st.py exe curler
check_output "status: pinned gets no file, the content differs from the pin" "is not what the sha256 pin says" \
  python3 $T/st.py exe pinned
check_output "status (text) names the mismatch for pinned" "is not what the sha256 pin says" \
  cat $OUT/status-after-reload.txt
allowed "curler: after the reload, the new file at /usr/bin/curl is allowed (the path names it now)" \
  curler "/usr/bin/curl $TOKPY"
denied "curler: python3 itself (same content, another file) is still denied" curler "python3 $TOKPY"
denied "pinned: after the reload, the overwritten /usr/bin/curl is still denied (sha256 pin)" \
  pinned "/usr/bin/curl $TOKPY"
info "policyd explain pinned $PEER_IP tcp 8080 --process /usr/bin/curl:"
policyd explain pinned $PEER_IP --proto tcp --port 8080 --process /usr/bin/curl 2>&1 | sed 's/^/    /' || true

step "6. policyd status: writable and read-only root filesystems"
check_output "status: curler's root filesystem is writable" writable st rootfs curler
check_output "status: pinned's root filesystem is writable" writable st rootfs pinned
check_output "status: ro's root filesystem is read-only" read-only st rootfs ro
check "status table: curler and ro rows show ROOT FS writable / read-only" bash -c \
  "grep -q 'ROOT FS' $OUT/status-start.txt && grep -E '^curler ' $OUT/status-start.txt | grep -q 'writable\$' \
   && grep -E '^ro ' $OUT/status-start.txt | grep -q 'read-only\$'"
check "status warns that curler and pinned, not ro, have process rules on a writable root" bash -c \
  "grep 'process rules on a writable root filesystem' $OUT/status-start.txt | grep -w curler | grep -w pinned | grep -vqw ro"
check_fails "ro: root cannot overwrite /usr/bin/curl" docker exec ro sh -c 'cat /usr/bin/python3 > /usr/bin/curl'
allowed "ro: /usr/bin/curl still reaches the peer" ro "$CURL"

cp $PLOG $OUT/peer.log
finish
