#!/usr/bin/env bash
# Verify deploy/: prints PASS / FAIL per check and exits 1 on any FAIL.
#
#   (a) promtool check config / rules on deploy/prometheus
#   (b) the real server (target/release/ferrotune, deploy/serve.toml with Redis on loopback) is
#       driven so its metric families have series; every `ferrotune:` name in the Grafana
#       dashboard and the alert rules is compared with its /metrics; a real Prometheus scrapes
#       it and evaluates every panel and alert expression
#   (c) Kubernetes: kustomize build, kubectl client dry-run, strict schema validation
#       (kubernetes-validate from PyPI), and the fields this deployment relies on
#   (d) compose.yaml's structure; the image: a bookworm rootfs from debootstrap imported as
#       localhost/debian:bookworm-slim (RUNTIME_IMAGE), `podman build` of deploy/Dockerfile with
#       the prebuilt binary, the container run as in the Deployment (read-only root, /tmp tmpfs,
#       no capabilities, the ConfigMap's serve.toml, models mounted), /ready, HEALTHCHECK, a chat
#       completion, SIGTERM
#
# Needs target/release/ferrotune (cargo build --release -p ferrotune-cli) and the default models
# (scripts/install-models.sh). Installs with apt-get what is missing (prometheus, redis-server,
# podman, runc, debootstrap) and kubernetes-validate into a venv. Re-runnable: the rootfs, the
# venv and the check's files are cached in target/deploy-cache (git-ignored as part of target/).
#
# Env: FERROTUNE_BIN, FERROTUNE_MODELS (default $FERROTUNE_HOME/models or .ferrotune/models),
#      DEPLOY_CHECK_PORT (first of 5 loopback ports, default 18470), DEBIAN_MIRROR (default: the
#      first URIs of this machine's apt sources), DEPLOY_CHECK_SKIP="image" to skip (d)'s image.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=$ROOT/target/deploy-cache
WORK=$CACHE/check
BIN=${FERROTUNE_BIN:-$ROOT/target/release/ferrotune}
MODELS=${FERROTUNE_MODELS:-${FERROTUNE_HOME:-$ROOT/.ferrotune}/models}
PORT=${DEPLOY_CHECK_PORT:-18470}
SERVER_PORT=$PORT REDIS_PORT=$((PORT + 1)) PROM_PORT=$((PORT + 2)) IMAGE_PORT=$((PORT + 3))
IMAGE=localhost/ferrotune:deploy-check
CONTAINER=ferrotune-deploy-check
mkdir -p "$WORK"

passes=0 fails=0 failed=()
pass() { echo "PASS  $1"; passes=$((passes + 1)); }
fail() {
    local title=$1
    echo "FAIL  $title"
    shift
    for line in "$@"; do printf '      %s\n' "$line"; done
    fails=$((fails + 1))
    failed+=("$title")
}
skips=0
skip() {
    echo "SKIP  $1"
    shift
    for line in "$@"; do printf '      %s\n' "$line"; done
    skips=$((skips + 1))
}
info() { printf '      %s\n' "$@"; }
# Last lines of a file, indented (error detail).
tail_of() { tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/      | /'; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    if command -v podman >/dev/null; then
        $PODMAN rm -f -t 5 "$CONTAINER" >/dev/null 2>&1
        $PODMAN volume rm -f "$CONTAINER-home" >/dev/null 2>&1
    fi
}
PODMAN=podman
trap cleanup EXIT

apt_updated=0
# need COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is not on PATH.
need() {
    command -v "$1" >/dev/null && return 0
    if [ $apt_updated = 0 ]; then
        apt-get update -qq >/dev/null 2>&1
        apt_updated=1
    fi
    echo "      installing $2 (apt-get) for $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >"$WORK/apt-$2.log" 2>&1
    command -v "$1" >/dev/null
}

# wait_http URL SECONDS [PID]: until URL answers 200 (or PID dies).
wait_http() {
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        curl -sf -o /dev/null "$1" && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
        sleep 0.5
    done
    return 1
}

VENV=$CACHE/venv
PY=$VENV/bin/python
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "kubernetes-validate==1.37.0" pyyaml >"$WORK/pip.log" 2>&1 \
        || { echo "cannot install kubernetes-validate into $VENV:"; tail_of "$WORK/pip.log"; }
fi
[ -x "$PY" ] || PY=python3

echo "== (a) Prometheus configuration"
if need promtool prometheus; then
    if out=$(promtool check config deploy/prometheus/prometheus.yml 2>&1); then
        pass "promtool check config deploy/prometheus/prometheus.yml"
    else
        fail "promtool check config deploy/prometheus/prometheus.yml" "$out"
    fi
    if out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1); then
        pass "promtool check rules deploy/prometheus/alerts.yml ($(grep -o '[0-9]* rules found' <<<"$out"))"
    else
        fail "promtool check rules deploy/prometheus/alerts.yml" "$out"
    fi
    if out=$(cd deploy/prometheus && promtool test rules alerts_test.yml 2>&1); then
        pass "promtool test rules deploy/prometheus/alerts_test.yml (each alert fires on its condition)"
    else
        fail "promtool test rules deploy/prometheus/alerts_test.yml" "$out"
    fi
else
    fail "promtool: apt-get install prometheus failed" "$(tail -3 "$WORK/apt-prometheus.log")"
fi

echo "== (b) dashboard and alert metric names against the real server's /metrics"
if out=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d["panels"]))' deploy/grafana/dashboards/ferrotune.json 2>&1); then
    pass "deploy/grafana/dashboards/ferrotune.json parses ($out panels and rows)"
else
    fail "deploy/grafana/dashboards/ferrotune.json does not parse" "$out"
fi
# Grafana's own schema: the dashboard type-checked against @grafana/schema (npm) with tsc.
if out=$(scripts/deploy/grafana_schema.sh 2>&1); then
    pass "$(echo "$out" | grep PASS | sed 's/^PASS  //' | head -1)"
else
    fail "the dashboard does not match Grafana's schema" "$out"
fi
server_ok=0
if [ ! -x "$BIN" ]; then
    fail "no server binary at $BIN" "build it: cargo build --release -p ferrotune-cli"
elif [ ! -f "$MODELS/smollm2-135m-instruct/manifest.json" ]; then
    fail "no smollm2-135m-instruct in $MODELS" "install it: scripts/install-models.sh"
elif ! need redis-server redis-server; then
    fail "redis-server: apt-get install redis-server failed" "$(tail -3 "$WORK/apt-redis-server.log")"
else
    # A fresh FERROTUNE_HOME each run (keys, audit), the installed models linked in.
    home=$WORK/home
    rm -rf "$home" && mkdir -p "$home" && ln -s "$MODELS" "$home/models"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
    pids+=($!)
    # deploy/serve.toml as shipped, but Redis on loopback instead of the compose service.
    sed "s#^redis_url = .*#redis_url = \"redis://127.0.0.1:$REDIS_PORT/\"#" deploy/serve.toml >"$WORK/serve.toml"
    key=$(FERROTUNE_HOME=$home "$BIN" keys create --name deploy-check --rpm 5 2>/dev/null | grep -o 'ft-[0-9a-f]*' | head -1)
    sleep 0.5
    FERROTUNE_HOME=$home "$BIN" serve --config "$WORK/serve.toml" --host 127.0.0.1 --port "$SERVER_PORT" >"$WORK/server.log" 2>&1 &
    server=$!
    pids+=($server)
    base=http://127.0.0.1:$SERVER_PORT
    if [ -z "$key" ]; then
        fail "ferrotune keys create printed no key"
    elif ! wait_http "$base/ready" 120 $server; then
        fail "ferrotune serve --config deploy/serve.toml (Redis on loopback) did not become ready" "$(tail_of "$WORK/server.log")"
    else
        server_ok=1
        chat() {
            curl -s -o "$WORK/chat.json" -w '%{http_code}' "$base/v1/chat/completions" -H "Authorization: Bearer $key" \
                -H "Content-Type: application/json" -d "$1"
        }
        # A sampled request (histograms), the same greedy one twice (a cache miss, then a hit
        # through Redis), an unknown model (failed_requests), then past --rpm 5 (rate_limited).
        codes="$(chat '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":8}')"
        for _ in 1 2; do
            codes+=" $(chat '{"model":"smollm2-135m-instruct","temperature":0,"messages":[{"role":"user","content":"Name a colour."}],"max_tokens":4}')"
        done
        codes+=" $(chat '{"model":"no-such-model","messages":[{"role":"user","content":"Hi"}]}')"
        codes+=" $(chat '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":1}')"
        codes+=" $(chat '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":1}')"
        if [ "$codes" = "200 200 200 404 200 429" ]; then
            pass "server on deploy/serve.toml: chat 200, greedy twice 200 200, unknown model 404, past rpm 429"
        else
            fail "server requests answered $codes (wanted 200 200 200 404 200 429)" "$(cat "$WORK/chat.json")"
        fi
        # /metrics without a key: metrics_require_key = false in deploy/serve.toml.
        if curl -sf "$base/metrics" -o "$WORK/metrics.txt"; then
            pass "/metrics answers without a key ($(grep -c '^ferrotune:' "$WORK/metrics.txt") samples)"
            if grep -q '^ferrotune:response_cache_hits_total{.*} 1$' "$WORK/metrics.txt"; then
                pass "the response cache in Redis answered the repeated greedy request"
            else
                fail "no response-cache hit counted (Redis cache)" "$(grep cache "$WORK/metrics.txt")"
            fi
            if out=$("$PY" scripts/deploy/promql.py names "$WORK/metrics.txt" crates/serve/src/metrics.rs 2>&1); then
                n_ok=$(grep -c '^ok' <<<"$out")
                pass "every metric name in the dashboard and alerts is exported ($n_ok seen in this scrape)"
                if grep -q '^registered' <<<"$out"; then
                    info "no series in this scrape (families registered in crates/serve/src/metrics.rs, they appear once counted):"
                    grep '^registered' <<<"$out" | sed 's/^/        /'
                fi
            else
                fail "metric names not exported by ferrotune serve" "$(grep -v '^ok' <<<"$out")"
            fi
        else
            fail "GET /metrics without a key failed"
        fi
    fi
fi

# A real Prometheus scrapes that server and evaluates every expression (Grafana's
# $__rate_interval as 1m, $model as .*), and loads the alert rules.
if [ $server_ok = 1 ] && command -v prometheus >/dev/null; then
    cp deploy/prometheus/alerts.yml "$WORK/alerts.yml"
    cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [alerts.yml]
scrape_configs:
  - job_name: ferrotune
    static_configs: [{targets: ["127.0.0.1:$SERVER_PORT"]}]
EOF
    rm -rf "$WORK/tsdb"
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
        --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
    pids+=($!)
    prom=http://127.0.0.1:$PROM_PORT
    if wait_http "$prom/-/ready" 30 && sleep 5; then
        # One more request between scrapes so rate() sees an increase.
        chat '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hello"}],"max_tokens":4}' >/dev/null
        curl -s -o /dev/null "$base/v1/chat/completions" -H "Authorization: Bearer $key" -H "Content-Type: application/json" -d '{"model":"smollm2-135m-instruct","temperature":0,"messages":[{"role":"user","content":"Name a colour."}],"max_tokens":4}'
        sleep 3
        out=$("$PY" - "$prom" <<'EOF'
import json, subprocess, sys, urllib.parse, urllib.request
prom = sys.argv[1]
lines = subprocess.run([sys.executable, "scripts/deploy/promql.py", "exprs"], capture_output=True, text=True, check=True).stdout.splitlines()
bad, empty, n = [], [], 0
for line in lines:
    item = json.loads(line)
    expr = item["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=10))
    except Exception as e:  # HTTP 400 = a PromQL error
        body = getattr(e, "read", lambda: b"")().decode()
        bad.append(f"{item['where']}: {body or e}")
        continue
    n += 1
    if not r["data"]["result"]:
        empty.append(item["where"])
rules = json.load(urllib.request.urlopen(prom + "/api/v1/rules", timeout=10))["data"]["groups"]
unhealthy = [f"{r['name']}: {r.get('lastError')}" for g in rules for r in g["rules"] if r.get("health") != "ok"]
print(json.dumps({"evaluated": n, "bad": bad, "empty": empty, "rules": sum(len(g["rules"]) for g in rules), "unhealthy": unhealthy}))
EOF
        )
        if [ -z "$out" ]; then
            fail "evaluating the expressions in Prometheus failed" "$(tail_of "$WORK/prometheus.log")"
        else
            read -r evaluated nbad nempty nrules nunhealthy < <("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["evaluated"], len(r["bad"]), len(r["empty"]), r["rules"], len(r["unhealthy"]))' "$out")
            if [ "$nbad" = 0 ]; then
                pass "Prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') evaluates all $evaluated dashboard and alert expressions on the live scrape ($((evaluated - nempty)) return data)"
                [ "$nempty" = 0 ] || info "empty now (no such event in this run):" \
                    "$("$PY" -c 'import json,sys; print("; ".join(json.loads(sys.argv[1])["empty"]))' "$out")"
            else
                fail "PromQL errors in Prometheus" "$("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])["bad"]))' "$out")"
            fi
            if [ "$nunhealthy" = 0 ] && [ "$nrules" -gt 0 ]; then
                pass "Prometheus loaded deploy/prometheus/alerts.yml: $nrules rules, all evaluating (health ok)"
            else
                fail "alert rules unhealthy in Prometheus" "$out"
            fi
        fi
    else
        fail "prometheus did not start" "$(tail_of "$WORK/prometheus.log")"
    fi
fi
# Stop the host server now: the image check needs the CPU.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
pids=()

echo "== (c) Kubernetes manifests"
if out=$(kubectl kustomize deploy/k8s 2>&1); then
    printf '%s\n' "$out" >"$WORK/k8s.yaml"
    pass "kubectl kustomize deploy/k8s ($(grep -c '^kind:' "$WORK/k8s.yaml") objects: $(grep '^kind:' "$WORK/k8s.yaml" | awk '{print $2}' | paste -sd, -))"
else
    fail "kubectl kustomize deploy/k8s" "$out"
fi
# `kubectl apply --dry-run=client` still asks the cluster for its API list (to map each kind to
# a resource) and, unless --validate=false, for its OpenAPI schema. Without a cluster both fail
# ("unable to recognize ... connection refused"): that is a SKIP with the error, not a PASS. The
# schema check is then kubernetes-validate's below (the API's OpenAPI schemas ship in its PyPI
# package), plus kustomize's build above.
if out=$(kubectl apply --dry-run=client -k deploy/k8s 2>&1); then
    pass "kubectl apply --dry-run=client -k deploy/k8s: $(paste -sd';' <<<"$out")"
elif grep -qE 'connection refused|unable to recognize|failed to download openapi|no such host|couldn.t get current server API' <<<"$out"; then
    skip "kubectl apply --dry-run=client -k deploy/k8s: no cluster to ask for its API list" \
        "$(grep -m1 -oE '(unable to recognize|error validating).*' <<<"$out" | cut -c1-200)" \
        "(--validate=false and kubectl create --dry-run=client -o yaml fail the same way)"
else
    fail "kubectl apply --dry-run=client -k deploy/k8s" "$out"
fi
if [ -x "$VENV/bin/kubernetes-validate" ]; then
    for v in 1.28.0 1.37.0; do
        if out=$("$VENV/bin/kubernetes-validate" --strict -k "$v" "$WORK/k8s.yaml" 2>&1); then
            pass "kubernetes-validate --strict against Kubernetes $v schemas ($(grep -c passed <<<"$out") objects)"
        else
            fail "kubernetes-validate --strict -k $v" "$out"
        fi
    done
else
    fail "kubernetes-validate is not installed" "$(tail_of "$WORK/pip.log")"
fi
if out=$("$PY" - "$WORK/k8s.yaml" <<'EOF' 2>&1
import sys, tomllib, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
errors = []
def want(cond, what):
    if not cond:
        errors.append(what)
dep = docs["Deployment"]["spec"]["template"]["spec"]
c = dep["containers"][0]
want(dep["securityContext"].get("runAsNonRoot") is True and dep["securityContext"].get("runAsUser") == 10001, "pod runs as non-root uid 10001")
for ctr in dep["containers"] + dep.get("initContainers", []):
    want(ctr["securityContext"].get("readOnlyRootFilesystem") is True, f"{ctr['name']}: readOnlyRootFilesystem")
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    want(mounts.get("/tmp") == "tmp" and mounts.get("/var/lib/ferrotune") == "home", f"{ctr['name']}: /tmp emptyDir and the claim at /var/lib/ferrotune")
vols = {v["name"]: v for v in dep["volumes"]}
want("emptyDir" in vols["tmp"], "tmp is an emptyDir")
want(vols["home"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"], "home is the PVC")
want(c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["httpGet"]["path"] == "/health", "readiness /ready, liveness /health")
want(all(k in c["resources"].get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")), "resources requests and limits")
want(dep.get("initContainers") and "installer" in dep["initContainers"][0]["image"], "an init container with the installer image")
cfg = tomllib.loads(docs["ConfigMap"]["data"]["serve.toml"])
want(cfg["host"] == "0.0.0.0" and cfg["port"] == 8000, "serve.toml listens on 0.0.0.0:8000")
want(c["ports"][0]["containerPort"] == cfg["port"], "containerPort = serve.toml port")
want(cfg["shutdown_timeout_secs"] < dep["terminationGracePeriodSeconds"], "shutdown_timeout_secs < terminationGracePeriodSeconds")
hpa = docs["HorizontalPodAutoscaler"]["spec"]
want(hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"], "the HPA scales the Deployment")
want(hpa["metrics"][0]["resource"]["name"] == "cpu", "the HPA scales on CPU")
svc = docs["Service"]["spec"]
want(svc["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items(), "the Service selects the pods")
if errors:
    print("\n".join("not true: " + e for e in errors))
    sys.exit(1)
print("non-root 10001, read-only root + /tmp emptyDir, PVC at /var/lib/ferrotune, /ready + /health probes, resources, init container, ConfigMap serve.toml on 0.0.0.0:8000, HPA on CPU, Service selector")
EOF
); then
    pass "manifest fields: $out"
else
    fail "manifest fields" "$out"
fi

echo "== (d) compose and the image"
if out=$("$PY" - <<'EOF' 2>&1
import re, yaml
from pathlib import Path
c = yaml.safe_load(open("deploy/compose.yaml"))
s = c["services"]
errors = []
def want(cond, what):
    if not cond:
        errors.append(what)
want(set(s) >= {"ferrotune", "redis", "prometheus", "grafana", "models"}, "services ferrotune, redis, prometheus, grafana, models")
targets = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", Path("deploy/Dockerfile").read_text()))
for name in ("ferrotune", "models"):
    b = s[name]["build"]
    want((Path("deploy") / b["context"] / b["dockerfile"]).is_file(), f"{name}: build.dockerfile exists")
    want(b["target"] in targets, f"{name}: build target {b['target']} is a stage of deploy/Dockerfile")
for name, svc in s.items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            want((Path("deploy") / src).exists(), f"{name}: bind mount {src} exists")
        else:
            want(src in c.get("volumes", {}), f"{name}: volume {src} is declared")
toml = Path("deploy/serve.toml").read_text()
want('redis://redis:6379/' in toml, "serve.toml's redis_url is the redis service")
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
want(["ferrotune:8000"] == prom["scrape_configs"][0]["static_configs"][0]["targets"], "Prometheus scrapes ferrotune:8000")
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yaml"))["datasources"][0]
want(ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus", "Grafana datasource is the prometheus service, uid prometheus")
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/ferrotune.yaml"))["providers"][0]
mounts = dict(v.split(":")[:2][::-1] for v in s["grafana"]["volumes"])
want(Path("deploy", mounts[prov["options"]["path"]][2:], "ferrotune.json").is_file(), "the dashboard provider's path holds ferrotune.json")
want(s["ferrotune"]["depends_on"]["redis"]["condition"] == "service_healthy", "ferrotune waits for a healthy Redis")
if errors:
    print("\n".join("not true: " + e for e in errors)); raise SystemExit(1)
print("services, build targets, mounts, Redis URL, scrape target, datasource, dashboard provider")
EOF
); then
    pass "deploy/compose.yaml wiring: $out"
    info "not run here: no registry to pull redis, prometheus and grafana images from"
else
    fail "deploy/compose.yaml wiring" "$out"
fi

image_check() {
    for pair in "podman podman" "runc runc" "debootstrap debootstrap"; do
        set -- $pair
        need "$1" "$2" || { fail "apt-get install $2 failed" "$(tail -3 "$WORK/apt-$2.log")"; return; }
    done
    # The runtime base: no container registry can be reached, so a minbase bookworm rootfs from
    # the Debian mirror stands in for debian:bookworm-slim (same release and glibc), imported
    # under localhost/ and passed as RUNTIME_IMAGE.
    local base=localhost/debian:bookworm-slim
    if ! podman image exists "$base"; then
        if [ ! -d "$CACHE/rootfs" ]; then
            local mirror=${DEBIAN_MIRROR:-$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}')}
            [ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | head -1 | awk '{print $2}')
            echo "      debootstrap --variant=minbase bookworm (from $mirror; a few minutes)"
            rm -rf "$CACHE/rootfs.tmp"
            if ! debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
                fail "debootstrap --variant=minbase bookworm $CACHE/rootfs.tmp $mirror" "$(tail_of "$WORK/debootstrap.log")"
                return
            fi
            mv "$CACHE/rootfs.tmp" "$CACHE/rootfs"
        fi
        if ! out=$(tar -C "$CACHE/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$base" 2>&1); then
            fail "podman import of the debootstrap rootfs as $base" "$out"
            return
        fi
    fi
    pass "runtime base $base present ($(podman image inspect "$base" --format '{{.Id}}' | cut -c1-12); a debootstrap rootfs unless pulled)"
    # crun refuses this VM's hybrid cgroup layout ("cgroups in hybrid mode not supported") and
    # podman's default ulimits exceed the hard limits here (no CAP_SYS_RESOURCE): try plain podman
    # first, then runc with the machine's own limits.
    local run_opts=()
    if ! out=$(podman run --rm "$base" true 2>&1); then
        info "podman run --rm $base true: $out"
        PODMAN="podman --runtime runc"
        run_opts=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
        if ! out=$($PODMAN run --rm "${run_opts[@]}" "$base" true 2>&1); then
            fail "podman cannot run containers here" "podman --runtime runc run --rm ${run_opts[*]} $base true: $out"
        else
            info "using: $PODMAN run ${run_opts[*]}"
        fi
    fi
    # Both ARGs explicit: buildah 1.28 (bookworm's podman 4.3) decides which stages to skip from
    # --build-arg values only, not from the Dockerfile's ARG defaults.
    local build=($PODMAN build "${run_opts[@]}" --format docker --ignorefile deploy/Dockerfile.dockerignore -f deploy/Dockerfile
        --build-arg RUNTIME_IMAGE="$base" --build-arg BINARY_FROM=prebuilt --build-arg MODELS_FROM=no-models
        --target runtime -t "$IMAGE" .)
    if ! "${build[@]}" >"$WORK/build.log" 2>&1; then
        fail "${build[*]}" "$(tail_of "$WORK/build.log" 20)"
        return
    fi
    pass "podman build -f deploy/Dockerfile --build-arg BINARY_FROM=prebuilt ($(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
    local user hc entry
    user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
    hc=$(podman image inspect "$IMAGE" --format '{{.Config.Healthcheck}}')
    entry=$(podman image inspect "$IMAGE" --format '{{.Config.Entrypoint}} {{.Config.Volumes}} {{.Config.Env}}')
    if [ "$user" = "10001:10001" ] && [[ $hc == *"/ready"* ]] && [[ $entry == *"serve --config /etc/ferrotune/serve.toml"* ]] \
        && [[ $entry == *"/var/lib/ferrotune"* ]] && [[ $entry == *"FERROTUNE_HOME=/var/lib/ferrotune"* ]]; then
        pass "image config: USER 10001:10001, HEALTHCHECK on /ready, ENTRYPOINT ferrotune serve --config /etc/ferrotune/serve.toml, VOLUME + FERROTUNE_HOME /var/lib/ferrotune"
    else
        fail "image config" "user=$user" "healthcheck=$hc" "entrypoint/volumes/env=$entry"
    fi
    # Run it as the Deployment does: the ConfigMap's serve.toml, read-only root, /tmp tmpfs, no
    # capabilities, a fresh volume for $FERROTUNE_HOME with the models mounted read-only.
    "$PY" -c 'import sys,yaml; d=[x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x["kind"]=="ConfigMap"][0]; open(sys.argv[2],"w").write(d["data"]["serve.toml"])' \
        "$WORK/k8s.yaml" "$WORK/configmap-serve.toml"
    $PODMAN rm -f -t 5 "$CONTAINER" >/dev/null 2>&1
    $PODMAN volume rm -f "$CONTAINER-home" >/dev/null 2>&1
    local run=($PODMAN run -d --name "$CONTAINER" "${run_opts[@]}" --read-only --tmpfs /tmp --cap-drop ALL
        --security-opt no-new-privileges -p "127.0.0.1:$IMAGE_PORT:8000"
        -v "$CONTAINER-home:/var/lib/ferrotune" -v "$MODELS:/var/lib/ferrotune/models:ro"
        -v "$WORK/configmap-serve.toml:/etc/ferrotune/serve.toml:ro" "$IMAGE")
    # Without systemd podman cannot schedule the periodic health check (it says so on stderr);
    # `podman healthcheck run` below runs the same command.
    if ! out=$("${run[@]}" 2>&1 | grep -v 'systemd'); then :; fi
    if ! $PODMAN container exists "$CONTAINER"; then
        fail "${run[*]}" "$out"
        return
    fi
    local url=http://127.0.0.1:$IMAGE_PORT
    if ! wait_http "$url/ready" 120; then
        fail "container did not answer /ready in 120 s" "$($PODMAN logs "$CONTAINER" 2>&1 | tail -15)"
        return
    fi
    pass "container (read-only root, --cap-drop ALL, ConfigMap serve.toml) answers /ready: $(curl -s "$url/ready")"
    if $PODMAN healthcheck run "$CONTAINER" >"$WORK/healthcheck.log" 2>&1; then
        pass "podman healthcheck run: the image's HEALTHCHECK (bash /dev/tcp, GET /ready) passes"
    else
        fail "podman healthcheck run $CONTAINER" "$(grep -v systemd "$WORK/healthcheck.log")"
    fi
    local uid key code
    uid=$($PODMAN exec "$CONTAINER" id -u 2>&1)
    key=$($PODMAN exec "$CONTAINER" ferrotune keys create --name deploy-check 2>/dev/null | grep -o 'ft-[0-9a-f]*' | head -1)
    code=$(curl -s -o "$WORK/image-chat.json" -w '%{http_code}' "$url/v1/chat/completions" -H "Authorization: Bearer $key" \
        -H "Content-Type: application/json" \
        -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":8}')
    if [ "$code" = 200 ] && "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["choices"][0]["message"]["content"]; print(r["choices"][0]["message"]["content"])' "$WORK/image-chat.json" >"$WORK/image-chat.txt" 2>&1; then
        pass "POST /v1/chat/completions in the container (uid $uid, key from \`ferrotune keys create\` in the container): 200, \"$(cat "$WORK/image-chat.txt")\""
    else
        fail "POST /v1/chat/completions in the container answered $code" "$(cat "$WORK/image-chat.json")" "$($PODMAN logs "$CONTAINER" 2>&1 | tail -5)"
    fi
    # SIGTERM: drains and exits 0 (what `docker stop` and a pod's termination send).
    $PODMAN stop -t 70 "$CONTAINER" >/dev/null 2>&1
    local exit_code
    exit_code=$($PODMAN inspect "$CONTAINER" --format '{{.State.ExitCode}}')
    $PODMAN logs "$CONTAINER" >"$WORK/container.log" 2>&1
    if [ "$exit_code" = 0 ] && tail -3 "$WORK/container.log" | grep -qi 'stop\|drain\|shut'; then
        pass "podman stop (SIGTERM): the server drained and exited 0"
    else
        fail "podman stop: exit code $exit_code" "$(tail -5 "$WORK/container.log")"
    fi
}
if [[ ${DEPLOY_CHECK_SKIP:-} == *image* ]]; then
    info "image check skipped (DEPLOY_CHECK_SKIP=image)"
else
    image_check
fi

echo
echo "$passes passed, $fails failed, $skips skipped"
if [ $fails -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
