# Kubernetes rows of bench/run (full mode), sourced by it: the same symmetric-key registrations
# against `kdps-registration serve` on the test control plane (tests/control-plane), raw creates
# of the same objects as the baseline, then 100k devices on the apiserver with the operator
# running, memory of operator + service and restart-to-serving of the service.
#
# Uses from bench/run: $out $bench $bin $svc_bin $results $id_scope, say, port, row,
# start_handshake_server and stop_pid.
# The control plane gets its own run dir under $out, so a developer's running one is untouched.

kube_cleanup=kube_stop
op_pid=""
kube_stop() {
  stop_pid "${svc_pid:-}"
  svc_pid=""
  stop_pid "$op_pid"
  op_pid=""
  [[ -z "${KDPS_CP_DIR:-}" ]] || tests/control-plane/down >&2 || true
}

# start_serve LABEL: `serve` in namespace bench with the admin kubeconfig; records
# restart-to-serving under LABEL.
start_serve() {
  local label="$1"
  svc_port="$(port)"
  svc_admin="$(port)"
  local t0
  t0="$(date +%s%N)"
  KDPS_LOG=info "$svc_bin" serve --namespace bench \
    --listen "127.0.0.1:$svc_port" --admin-listen "127.0.0.1:$svc_admin" \
    --tls-cert "$out/data/tls/server.pem" --tls-key "$out/data/tls/server-key.pem" \
    >>"$out/serve.log" 2>&1 &
  svc_pid=$!
  endpoint="https://127.0.0.1:$svc_port"
  ca="$out/data/tls/ca.pem"
  "$bench" serving --admin "127.0.0.1:$svc_admin" --endpoint "$endpoint" --ca-cert "$ca" \
    --id-scope "$id_scope" --started-ns "$t0" --label "$label" --timeout-secs 900 \
    --results "$results" >/dev/null || { tail -n 30 "$out/serve.log" >&2; return 1; }
}

kube_rows() {
  say "Kubernetes backend: starting the test control plane"
  export KDPS_CP_DIR="$out/cp"
  local exports
  exports="$(tests/control-plane/up)"
  eval "$exports"
  local apiserver etcd
  apiserver="$(<"$KDPS_CP_DIR/pids/kube-apiserver.pid")"
  etcd="$(<"$KDPS_CP_DIR/pids/etcd.pid")"

  kubectl apply --server-side -f crds/ >&2
  kubectl wait --for=condition=Established crd --all --timeout=120s >&2
  for ns in bench bench-hub-a bench-hub-b kdps-system; do
    kubectl create namespace "$ns" >&2
  done
  kubectl apply -f "$out/manifests/provisioning-service.yaml" \
    -f "$out/manifests/iot-hub-links.yaml" -f "$out/manifests/enrollments.yaml" >&2

  # The operator reconciles the ProvisioningService (Deployment, RBAC, certificates; no kubelet
  # runs them) and watches what it watches in production, so its memory is real.
  "$bin/kdps-operator" run --operator-namespace kdps-system \
    --admin-listen "127.0.0.1:$(port)" --log-filter info >"$out/operator.log" 2>&1 &
  op_pid=$!

  start_serve kube-serving-empty
  start_handshake_server "$out/data"
  local watch=(--watch-pid "apiserver=$apiserver" --watch-pid "etcd=$etcd" --watch-pid "operator=$op_pid")

  say "Kubernetes backend vs raw apiserver creates (concurrency 32, alternating)"
  local n=2000 k
  for k in 1 2; do
    "$bench" kube-create --label kube-raw-create --namespace bench --devices "$n" \
      --concurrency 32 --prefix "raw$k" --server-pid "$apiserver" "${watch[@]}" \
      --results "$results" >/dev/null
    row kube-symkey symmetric-key 32 "$n" --warmup 100 "${watch[@]}"
  done
  row handshake-baseline-with-cp handshake 32 3000 --warmup 100

  local scale="${KDPS_BENCH_KUBE_DEVICES:-100000}"
  say "Kubernetes backend with $scale devices on the apiserver"
  "$bench" kube-create --label kube-populate --namespace bench --devices "$scale" \
    --concurrency 64 --prefix scale --server-pid "$apiserver" "${watch[@]}" \
    --results "$results" >/dev/null
  stop_pid "$svc_pid"
  svc_pid=""
  start_serve kube-serving-100k
  row kube-100k-symkey symmetric-key 32 "$n" --warmup 100 "${watch[@]}"
  "$bench" kube-create --label kube-100k-raw-create --namespace bench --devices "$n" \
    --concurrency 32 --prefix raw-big --server-pid "$apiserver" "${watch[@]}" \
    --results "$results" >/dev/null
  # Memory of the two kdps processes with $scale devices on the apiserver, after the rows.
  "$bench" rss --label "kube-${scale}-memory" --pid "operator=$op_pid" --pid "service=$svc_pid" \
    --results "$results" >/dev/null

  stop_pid "$hs_pid"
  hs_pid=""
  kube_stop
}
