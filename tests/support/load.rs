//! Running the load engine (`wsctl::load::run`) in process, as the load tests do.

use tokio_util::sync::CancellationToken;
use wsctl::load::{Live, LoadConfig, Report};

/// The open-file limit the engine is told about: plenty for the few hundred connections these
/// tests open.
pub const FD_LIMIT: u64 = 20_000;

/// Runs `c` to the end, with no live view and no cancellation.
pub async fn run(c: LoadConfig) -> Report {
    wsctl::load::run(c, Live::new(), CancellationToken::new(), FD_LIMIT, 0).await.expect("load run starts")
}
