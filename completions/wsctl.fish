# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_wsctl_global_optspecs
    string join \n log-format= h/help V/version
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
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -l redis-cluster -d 'Treat the URL\'s host(s) as Redis Cluster seed nodes even with a plain redis:// scheme'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand serve" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand load" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand load" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand load" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand routes" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand metrics" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -l log-format -d 'Log format on stderr: human-readable text, or one JSON object per line for log shippers. Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug)' -r -f -a "text\t''
json\t''"
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c wsctl -n "__fish_wsctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "serve" -d 'Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "load" -d 'Simulate thousands of clients: connect, send, measure latency, audit delivery'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "routes" -d 'Inspect and purge the Redis route table (user_servers:<user> sets)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "metrics" -d 'Watch the fleet\'s metrics live, from CloudWatch or the nodes\' /metrics endpoints'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c wsctl -n "__fish_wsctl_using_subcommand help; and not __fish_seen_subcommand_from serve load routes metrics completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
