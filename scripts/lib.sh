# Shared by the benchmark and fault scripts (sourced, not run): free loopback ports and waiting
# for a condition. Traffic stays on 127.0.0.1.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# A free port for a Redis Cluster node: the node also listens on port + 10000, so the port must
# be at most 55535 and both must be free.
cluster_port() {
  python3 -c 'import random, socket
for _ in range(1000):
    p = random.randint(20000, 55535)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}

# Runs the shell command $1 every 50 ms until it succeeds, at most WAIT_TRIES times (400: 20 s).
wait_for() {
  for _ in $(seq 1 "${WAIT_TRIES:-400}"); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for: $1" >&2
  return 1
}
