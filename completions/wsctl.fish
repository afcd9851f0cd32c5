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
complete -c wsctl -n "__fish_wsctl_needs_command" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_needs_command" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_needs_command" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "serve" -d 'Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "load" -d 'Simulate thousands of clients: connect, send, measure latency, audit delivery'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "routes" -d 'Inspect and purge the Redis route table (user_servers:<user> sets)'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "metrics" -d 'Watch the fleet\'s metrics live, from CloudWatch or the nodes\' /metrics endpoints'
complete -c wsctl -n "__fish_wsctl_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
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
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l send-queue -d 'Frames queued per connection before it is closed as a slow consumer (4008)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l max-frame -d 'Largest frame a client may send, bytes (larger: error `too_large`, close 1009)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l ping-interval -d 'Interval between server pings' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l idle-timeout -d 'Close a connection silent (no frame, pong or heartbeat) for this long (1001)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l drain-timeout -d 'On SIGTERM, how long connections get to flush and close' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l profile -d 'YAML profile (see profiles/); flags given here override its values' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l url -d 'Target, e.g. ws://127.0.0.1:8081/ws (repeatable: connections go round-robin over them)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -s c -l clients -d 'Simulated users in the whole run (all shards). [default: 50]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l connections-per-user -d 'WebSocket connections per user. [default: 1]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l ramp -d 'Connection rate, e.g. 1000/s. [default: 1000/s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -s d -l duration -d 'How long traffic runs once everyone is connected, e.g. 30s. [default: 5s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l rate -d 'Messages per second per connection (15, 15/s, 1/10s); 0 holds idle connections. [default: 2]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l total-rate -d 'Messages per second for the whole run, split over the connections (overrides --rate)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l pattern -d 'Receivers: random, ring, hot, self-node, cross-node. [default: random]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l hot-users -d 'Receivers of the hot pattern. [default: 10]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l payload-size -d 'Bytes of padding per message payload. [default: 32]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l heartbeat -d 'Heartbeat frame interval per connection. [default: 30s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l latency-report -d 'latency_report frame interval per connection; 0s turns them off. [default: 10s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l source-ip -d 'Local source addresses for client sockets, e.g. 127.0.0.2-127.0.0.9 (more than ~28k connections to one target need several)' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l drain -d 'After the last send, wait up to this long for messages in flight. [default: 2s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l user-prefix -d 'User ids are PREFIX<index>. [default: load-]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l connect-timeout -d 'Per connection attempt (TCP + handshake). [default: 10s]' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l shard -d 'Run shard I of N (1-based): N processes split the users without overlap; merge their --json reports with `wsctl load merge`. Receivers are picked within the shard' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l json -d 'Write the full report (every figure, histograms serialized) to this file' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l assert -d 'Threshold, e.g. \'p99<50ms\' or \'lost=0\' (repeatable); any failure exits with 99' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l spawn-local -d 'Start an embedded node in this process and run the smoke profile against it'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l reconnect -d 'Reconnect closed connections (1012 drain, 4008, errors) with jittered backoff'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -l quiet -d 'No live progress line'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and not __fish_seen_subcommand_from merge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l json -d 'Write the merged report here' -r -F
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l assert -d 'Thresholds checked against the merged report' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from merge" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from help" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
complete -c wsctl -n "__fish_wsctl_using_subcommand load; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -l threads -d 'Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no cross-thread wake-ups: the cheapest per message when several processes share few cores' -r
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "serve" -d 'Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "load" -d 'Simulate thousands of clients: connect, send, measure latency, audit delivery'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "routes" -d 'Inspect and purge the Redis route table (user_servers:<user> sets)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "metrics" -d 'Watch the fleet\'s metrics live, from CloudWatch or the nodes\' /metrics endpoints'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and __fish_seen_subcommand_from load" -f -a "merge" -d 'Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so percentiles are those of all samples, not averages'
