# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_wsctl_global_optspecs
    string join \n log-format= threads= h/help V/version
end

function __fish_wsctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_wsctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_wsctl_using_subcommand
    set -l cmd (__fish_wsctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c wsctl -n "__fish_wsctl_needs_command" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_needs_command" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_needs_command" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_needs_command" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "serve" -d 'Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "load" -d 'Simulate thousands of clients: connect, send, measure latency, audit delivery'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "routes" -d 'Inspect and purge the Redis route table (user_servers:<user> sets)'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "metrics" -d 'Watch the fleet\'s metrics live, from CloudWatch or the nodes\' /metrics endpoints'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "config" -d 'Settings files: print a complete default one, or check one'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "token" -d 'Mint a JWT that `serve` accepts (HS256 from JWT_SECRET, or RS256/ES256 from a PEM key)'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "generate" -d 'Write the man pages (DIR/man) and shell completions (DIR/completions) checked into the repo'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s p -l port -d 'Port to listen on' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l bind -d 'Address to bind' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l server-id -d 'This node\'s id in the route table (must be unique among live nodes). Default: random' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l advertise -d 'Address other tools should use to reach this node (written into its lease)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l jwt-secret -d 'HS256 secret (at least 32 bytes): every connection then needs a JWT signed with it, in `?token=`, `Authorization: Bearer` or `Sec-WebSocket-Protocol: wsctl.bearer, <token>`; the user is its `sub`. Prefer the variable: a flag shows in `ps`. An empty value is refused (an empty secret mount must not turn auth off): unset it to run without auth' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l jwt-public-key -d 'PEM public key (RSA or EC) to verify RS256/ES256 tokens with, instead of a secret' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l jwt-algorithm -d 'The algorithm a --jwt-public-key signs with (default: RS256 for RSA, ES256 for EC keys). Only that one algorithm is accepted' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l jwt-audience -d 'Accept only tokens whose `aud` claim names this audience (a token without `aud` is refused too, 401). Needs a key. Default: `aud` is not checked' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l jwt-issuer -d 'Accept only tokens whose `iss` claim is this issuer (a token without `iss` is refused too, 401). Needs a key. Default: `iss` is not checked' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l room-policy -d 'Who may join a room with auth on: `claims` (a join needs a `rooms`/`rooms_read` claim in the connection\'s token, or a room token on the join; others are refused `forbidden`) or `open` (any connection joins any room). With auth off rooms are always open' -r -f -a "claims\t''
open\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l allowed-origin -d 'Origin allowed to open sockets (repeatable, or comma-separated in the variable), e.g. https://app.example.com or https://*.example.com. Others get 403; requests without an Origin header (non-browser clients) are allowed. Default: any origin' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-connections -d 'Connections this node accepts; past it, 503 before the upgrade (0 = no cap)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-conns-per-user -d 'Connections one user may hold on this node; past it, 429 (0 = no cap)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-conns-per-ip -d 'Connections one client IP may hold on this node; past it, 429 (0 = no cap). Off by default: behind a proxy that hides client addresses it would cap the proxy' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l rate-limit -d 'Frames per second one connection may send; excess frames are dropped with a `rate_limited` error, and 5 s of sustained excess closes it with 4029 (0 = no limit)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l rate-burst -d 'Frames a connection may send at once above --rate-limit' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l header-timeout -d 'Time a client has to send its whole HTTP request head (slowloris guard)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-pending-handshakes -d 'Sockets accepted but not yet upgraded (or answered and closed) at most, per listener; a new one past it closes the oldest (0 = no cap). --max-connections counts upgraded sockets only' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l send-queue -d 'Frames queued per connection before it is closed as a slow consumer (4008)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l send-queue-bytes -d 'Bytes queued per connection before it is closed as a slow consumer (4008)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l history-size -d 'Messages kept per user (the newest), 1 to 10000' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l history-ttl -d 'A user\'s history expires this long after its last message' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l idem-window -d 'How long a sender\'s idempotency key (`"idem"` on chat_message, `"idempotency_key"` on the API) is remembered: a retry with the same key within it is answered `duplicate` and never delivered twice' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l join-proxy -d 'Ask this backend (an http:// URL) about joins that no grant allows (auth on, room policy `claims`): it is POSTed {"user","room","client_ip"} and answers 200 {"allow":true, "read_only":false} or 403. A timeout, an error or garbage refuses the join (`unavailable`)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l proxy-timeout -d 'Bound of every call to the backend (the join proxy)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-frame -d 'Largest frame a client may send, bytes (larger: error `too_large`, close 1009)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l ping-interval -d 'Interval between server pings' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l idle-timeout -d 'Close a connection silent (no frame, pong or heartbeat) for this long (1001)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l drain-timeout -d 'On SIGTERM, how long connections get to flush and close' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l api-key -d 'Turns on the HTTP API for backends (/api/publish, /api/publish/batch, /api/presence/{user}, /api/rooms/{room}); callers send `Authorization: Bearer <key>`. Without it the API is off (404)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l metrics-addr -d 'Also serve GET /metrics (Prometheus text) on this address, e.g. 127.0.0.1:9090, to keep scrapes off the client port. /metrics on the main port stays available' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l cloudwatch-namespace -d 'CloudWatch namespace' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l cloudwatch-interval -d 'How often to push (each push carries that interval\'s counts; below 60s uses high-resolution storage, which CloudWatch bills more for)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l cloudwatch-region -d 'AWS region (default: from AWS_REGION / the profile)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l cloudwatch-endpoint -d 'A CloudWatch-compatible endpoint URL instead of AWS\'s (e.g. http://127.0.0.1:5000 for moto_server)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l mixed-fleet -d 'Go nodes (which write no `server_alive` lease) share this Redis: do not treat a route to a node without a lease as dead. Leave off otherwise: with it, a crashed node\'s users stay "online" until their presence keys expire (60 s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l history -d 'Keep every message to a user in a per-user history in Redis, with an offset and epoch, so a client reconnecting with `?since=<offset>&epoch=<epoch>` gets what it missed. Needs Redis'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l cloudwatch -d 'Push metrics to CloudWatch (namespace, ServerID dimension, one push per interval). Credentials and region come from the AWS config chain (AWS_* variables, profile, role)'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l print-config -d 'Print the effective settings and where each came from (flag, env, file, default), with secrets redacted, then exit'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l profile -d 'YAML profile (see profiles/); flags given here override its values' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l url -d 'Target, e.g. ws://127.0.0.1:8081/ws (repeatable: connections go round-robin over them)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -s c -l clients -d 'Simulated users in the whole run (all shards). [default: 50]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l connections-per-user -d 'WebSocket connections per user. [default: 1]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l ramp -d 'Connection rate, e.g. 1000/s. [default: 1000/s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -s d -l duration -d 'How long traffic runs once everyone is connected, e.g. 30s. [default: 5s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l rate -d 'Messages per second per connection (15, 15/s, 1/10s); 0 holds idle connections. [default: 2]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l total-rate -d 'Messages per second for the whole run, split over the connections (overrides --rate)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l pattern -d 'Receivers: random, ring, hot, self-node, cross-node, room (with --rooms and --room-size). [default: random]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l rooms -d 'With --pattern room: how many rooms. Users are --rooms x --room-size (--clients may be left out)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l room-size -d 'With --pattern room: users per room. Each connection joins its user\'s room and sends room_message; every other member connection must get each message once, the sender none' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l room-prefix -d 'Room names are PREFIX<index>. [default: load-room-]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l api-publish -d 'Also publish through the server\'s HTTP API (POST /api/publish) at this many messages per second for the whole run, to random users (or rooms with --pattern room); audited with the rest. Needs --api-key' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l api-key -d 'Bearer key of the server\'s HTTP API' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l hot-users -d 'Receivers of the hot pattern. [default: 10]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l payload-size -d 'Bytes of padding per message payload. [default: 32]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l heartbeat -d 'Heartbeat frame interval per connection. [default: 30s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l latency-report -d 'latency_report frame interval per connection; 0s turns them off. [default: 10s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l source-ip -d 'Local source addresses for client sockets, e.g. 127.0.0.2-127.0.0.9 (more than ~28k connections to one target need several)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l drain -d 'After the last send, wait up to this long for messages in flight. [default: 2s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l user-prefix -d 'User ids are PREFIX<index>. [default: load-]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l connect-timeout -d 'Per connection attempt (TCP + handshake). [default: 10s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l shard -d 'Run shard I of N (1-based): N processes split the users without overlap; merge their --json reports with `wsctl load merge`. Receivers are picked within the shard' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l json -d 'Write the full report (every figure, histograms serialized, per-second series) to this file' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l csv -d 'Write the per-second series as CSV to this file' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l assert -d 'Threshold, e.g. \'p99<50ms\' or \'lost=0\' (repeatable); any failure exits with 99' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l spawn-local -d 'Start an embedded node in this process and run the smoke profile against it'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l reconnect -d 'Reconnect closed connections (1012 drain, 4008, errors) with jittered backoff'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l resume -d 'With --reconnect, against a server with history: reconnect with since=<last offset>&epoch=<epoch>. Messages sent while a connection was down are then owed to it (replayed), and any duplicate is a failure'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l ack -d 'Every chat send carries an id; the server\'s ack or error is matched: the report separates sends the server refused (by code) or found offline from those lost after it accepted them, and gives the ack latency and the sends never answered'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -l quiet -d 'No live progress line'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -f -a "plot" -d 'Draw a --json report\'s per-second series (sent/s, delivered/s, p50/p99, connections) as an SVG'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge plot help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l json -d 'Write the merged report here' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l assert -d 'Thresholds checked against the merged report' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from plot" -s o -l output -d 'The SVG to write' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from plot" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from plot" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from plot" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from plot" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from help" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from help" -f -a "plot" -d 'Draw a --json report\'s per-second series (sent/s, delivered/s, p50/p99, connections) as an SVG'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "servers" -d 'The nodes: from their server_alive leases and from the server ids in route sets, with live/dead, connections, address, version, age, and how many routes name them'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "show" -d 'Every route of one user, with its user_online TTL and whether its node is alive'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "list" -d 'Routes, as tables of 50 rows printed as they are read, or one JSON object per line (--json)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "stats" -d 'Totals: users routed, routes, stale routes, and per node'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "purge" -d 'Remove stale routes (entries whose user_online key is gone), or every route of a dead node (--server), without ever removing a live one; route sets left empty disappear'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and not __fish_seen_subcommand_from servers show list stats purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l rate -d 'Keys walked per second at most ("5000" or "5000/s"), to spare a production Redis' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -l json -d 'Print JSON on stdout instead of tables'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from servers" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -l json -d 'Print JSON on stdout instead of tables'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l rate -d 'Keys walked per second at most ("5000" or "5000/s"), to spare a production Redis' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l match -d 'Only users whose id matches this glob (Redis MATCH syntax: *, ?, [abc])' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l limit -d 'Stop after this many routes' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l json -d 'Print JSON on stdout instead of tables'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -l stale-only -d 'Only stale routes (user_online key gone)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l rate -d 'Keys walked per second at most ("5000" or "5000/s"), to spare a production Redis' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -l json -d 'Print JSON on stdout instead of tables'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from stats" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l redis-uri -d 'Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l redis-username -d 'ACL user name (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l redis-password -d 'ACL password (overrides the URL\'s)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l pubsub -d 'Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH, copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone' -r -f -a "sharded\t''
classic\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l rate -d 'Keys walked per second at most ("5000" or "5000/s"), to spare a production Redis' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l server -d 'Remove every route of this node, stale or not. Refused while its lease (server_alive:<ID>) exists, i.e. while the node is alive' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l json -d 'Print JSON on stdout instead of tables'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -l dry-run -d 'Report what would be removed; change nothing'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -s y -l yes -d 'Do not ask for confirmation (required when stdin is not a terminal)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from purge" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "servers" -d 'The nodes: from their server_alive leases and from the server ids in route sets, with live/dead, connections, address, version, age, and how many routes name them'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "show" -d 'Every route of one user, with its user_online TTL and whether its node is alive'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "list" -d 'Routes, as tables of 50 rows printed as they are read, or one JSON object per line (--json)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Totals: users routed, routes, stale routes, and per node'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Remove stale routes (entries whose user_online key is gone), or every route of a dead node (--server), without ever removing a live one; route sets left empty disappear'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -f -a "tail" -d 'Watch the fleet live: one row per server and a fleet total, refreshed every period'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and not __fish_seen_subcommand_from tail help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l prometheus -d 'Scrape this node\'s Prometheus endpoint instead of reading CloudWatch (repeatable). No AWS needed' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l since -d 'How far back to read CloudWatch (the sparkline covers the most recent 16 periods of it)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l period -d 'Refresh period; for CloudWatch also the aggregation period (1s, 5s, 10s, 30s or a multiple of 60s). Default: 60s for CloudWatch, 5s with --prometheus' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l server -d 'Only this ServerID (default: every server found in the namespace)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l namespace -d 'CloudWatch namespace the nodes publish to' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l region -d 'AWS region (default: from AWS_REGION / the profile; us-east-1 with --endpoint)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l endpoint -d 'A CloudWatch-compatible endpoint URL (e.g. moto_server) instead of AWS\'s' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l count -d 'Stop after this many snapshots (default: until Ctrl-C)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l config -d 'YAML settings file: keys are this command\'s long flag names (`redis-uri: ...`). Flags and environment variables override it. `wsctl config default` prints a complete one' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l once -d 'Print one snapshot and exit (with --prometheus: two scrapes one period apart, for rates)'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -l json -d 'One JSON object per snapshot, one per line'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from tail" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from help" -f -a "tail" -d 'Watch the fleet live: one row per server and a fleet total, refreshed every period'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -f -a "default" -d 'Print a settings file for `serve` with every setting, its default and its help'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -f -a "check" -d 'Check a settings file ("-" reads stdin): report every problem with its line and field'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and not __fish_seen_subcommand_from default check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from default" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from default" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from default" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from default" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from check" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from check" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from check" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "default" -d 'Print a settings file for `serve` with every setting, its default and its help'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check a settings file ("-" reads stdin): report every problem with its line and field'
complete -c wsctl -n "__fish_wsctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l user -d 'The user the token names (its `sub` claim)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l ttl -d 'How long the token is valid' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l secret -d 'HS256 secret (at least 32 bytes)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l private-key -d 'PEM private key (RSA or EC, PKCS#8) to sign with instead of a secret' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l algorithm -d 'Algorithm for --private-key (default: RS256 for RSA, ES256 for EC)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l audience -d '`aud` claim to write, for a node run with --jwt-audience (the same variable)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l issuer -d '`iss` claim to write, for a node run with --jwt-issuer (the same variable)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l rooms -d 'A room pattern the connection may join, receive from and send to (`rooms` claim; an exact name or a prefix ending in `*`). Repeatable' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l rooms-read -d 'A room pattern the connection may join and receive from only (`rooms_read`). Repeatable' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l room -d 'Mint a room token instead: it grants this one room to --user (a join\'s `"token"`)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l read-only -d 'With --room: the room token grants receiving only'
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -l json -d 'Print {"token":..,"user":..,"expires_at":..} instead of the bare token'
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand token" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand generate" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand generate" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores. `wsctl load` also runs as many connection loops (one thread each), which carry the traffic of the connections split among them' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand generate" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand generate" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "serve" -d 'Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "load" -d 'Simulate thousands of clients: connect, send, measure latency, audit delivery'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "routes" -d 'Inspect and purge the Redis route table (user_servers:<user> sets)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "metrics" -d 'Watch the fleet\'s metrics live, from CloudWatch or the nodes\' /metrics endpoints'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "config" -d 'Settings files: print a complete default one, or check one'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "token" -d 'Mint a JWT that `serve` accepts (HS256 from JWT_SECRET, or RS256/ES256 from a PEM key)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "generate" -d 'Write the man pages (DIR/man) and shell completions (DIR/completions) checked into the repo'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics config token completions generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from load" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from load" -f -a "plot" -d 'Draw a --json report\'s per-second series (sent/s, delivered/s, p50/p99, connections) as an SVG'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from routes" -f -a "servers" -d 'The nodes: from their server_alive leases and from the server ids in route sets, with live/dead, connections, address, version, age, and how many routes name them'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from routes" -f -a "show" -d 'Every route of one user, with its user_online TTL and whether its node is alive'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from routes" -f -a "list" -d 'Routes, as tables of 50 rows printed as they are read, or one JSON object per line (--json)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from routes" -f -a "stats" -d 'Totals: users routed, routes, stale routes, and per node'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from routes" -f -a "purge" -d 'Remove stale routes (entries whose user_online key is gone), or every route of a dead node (--server), without ever removing a live one; route sets left empty disappear'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from metrics" -f -a "tail" -d 'Watch the fleet live: one row per server and a fleet total, refreshed every period'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "default" -d 'Print a settings file for `serve` with every setting, its default and its help'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Check a settings file ("-" reads stdin): report every problem with its line and field'
