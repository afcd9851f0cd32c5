//! Running the broker's Lua scripts by hash: EVALSHA, and on NOSCRIPT (Redis restarted empty,
//! failed over, or its script cache was flushed) SCRIPT LOAD and one more EVALSHA.
//!
//! fred's `Script::evalsha_with_reload` does the same but clones every key and argument on each
//! call, to have them for the retry, and a routing batch has two arguments per message. Here the
//! caller passes a function that builds them, so the common path moves them into the command and
//! only a NOSCRIPT builds them a second time.

use fred::prelude::*;
use fred::types::scripts::Script;

/// Whether `e` is Redis saying it does not have the script (fred has no error kind for it).
pub(crate) fn is_noscript(e: &Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

/// Runs `script` with the keys and arguments `build` returns, loading the script and building
/// them again if Redis does not have it. No deadline of its own: callers bound the whole call.
pub(crate) async fn evalsha<R, F>(client: &Client, script: &Script, build: F) -> Result<R, Error>
where
    R: FromValue,
    F: Fn() -> (Vec<String>, Vec<Value>),
{
    let (keys, args) = build();
    match client.evalsha(script.sha1().clone(), keys, args).await {
        Err(e) if is_noscript(&e) => {
            script.load(client).await?;
            let (keys, args) = build();
            client.evalsha(script.sha1().clone(), keys, args).await
        }
        result => result,
    }
}
