//! wsctl: non-sticky real-time WebSocket messaging over Redis. This crate is the core shared by
//! every `wsctl` subcommand; it does no terminal output and parses no arguments.
//!
//! # Layout
//! - [`protocol`]: frames, envelopes, error and close codes (../shared/spec/protocol.md).
//! - [`hub`]: this node's connections by user, with bounded send queues.
//! - [`broker`]: carrying envelopes between nodes: in-process ([`MemoryBroker`]) or Redis
//!   ([`RedisBroker`], standalone or Cluster).
//! - [`redis`]: connecting to Redis the same way for every subcommand.
//! - [`routes`]: the route-table keys, TTLs and lease shared by `serve` and `routes`.
//! - [`server`]: the axum router, sessions (reader + writer task) and drain.
//! - [`metrics`]: a node's metrics registry.

pub mod broker;
#[doc(hidden)]
pub mod fuzz;
pub mod hub;
pub mod load;
pub mod metrics;
pub mod protocol;
pub mod redis;
pub mod routes;
pub mod server;

pub use broker::{Broker, MemoryBroker, RedisBroker};
pub use hub::Hub;
pub use metrics::Metrics;
pub use redis::{PubsubMode, RedisConfig};
pub use server::{serve, Limits, LimitsError, ServerConfig, ServerError};
