//! wsctl: non-sticky real-time WebSocket messaging over Redis. This crate is the core shared by
//! every `wsctl` subcommand; it does no terminal output and parses no arguments.
//!
//! # Layout
//! - [`protocol`]: frames, envelopes, error and close codes (../shared/spec/protocol.md).
//! - [`hub`]: this node's connections by user, with bounded send queues.
//! - [`broker`]: carrying envelopes between nodes: in-process ([`MemoryBroker`]) or Redis
//!   ([`RedisBroker`], standalone or Cluster).
//! - [`redis`]: connecting to Redis the same way for every subcommand.
//! - [`routes`]: the route-table keys, TTLs and node lease shared by `serve` and `routes`, and
//!   [`routes::admin`], the SCAN-based walks and purge behind `wsctl routes`.
//! - [`rooms`]: this node's room members, with the caps on rooms and members;
//!   [`room_access`]: who may join and send (token grants, the room policy).
//! - [`hooks`]: calls to the app's backend (the join proxy), bounded and failing closed.
//! - [`server`]: the axum router, sessions (reader + writer task) and drain.
//! - [`metrics`]: a node's instrumentation and exporters: registry, `/metrics`, CloudWatch push.
//! - [`tail`]: the readers behind `wsctl metrics tail`: Prometheus scrape, CloudWatch queries,
//!   and the engine that turns them into rows.
//! - [`load`]: the load engine behind `wsctl load`: simulated clients, schedule, latency
//!   histograms and the delivery audit; it returns reports, the command draws them.

pub mod broker;
#[doc(hidden)]
pub mod fuzz;
pub mod hooks;
pub mod hub;
pub mod load;
pub mod metrics;
pub mod protocol;
pub mod redis;
pub mod room_access;
pub mod rooms;
pub mod routes;
pub mod server;
pub mod tail;

pub use broker::{Broker, MemoryBroker, RedisBroker};
pub use hub::Hub;
pub use rooms::{RoomLimits, Rooms};
pub use metrics::Metrics;
pub use redis::{PubsubMode, RedisConfig};
pub use server::{serve, Limits, LimitsError, ServerConfig, ServerError};
