//! The HTTP API for backends (docs/api.md): publish to a user or a room, one message or a batch,
//! and ask where a user is connected and how many members a room has. On only when the node has
//! an API key; every call must present it as `Authorization: Bearer <key>`, compared in constant
//! time. Answers are JSON, errors included (`{"error":code,"message":..}`).
//!
//! A publish goes the way a client's does: local connections straight from the hub (or the room
//! table), other nodes through the broker, and the answer waits (bounded by the broker's batch
//! deadline) until the broker knows where it went.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::Node;
use crate::broker::{idem_key, room_idem_key, Publish, PublishError, RoomIdem, Ticket};
use super::deliver::{self, Started};
use crate::protocol::{self, Frame};
use crate::rooms;

/// Largest body of `POST /api/publish`: a client's largest frame ([`super::MAX_FRAME`]), so
/// whatever a backend publishes can be written to a client like a client's own message.
pub const API_MAX_BODY: usize = super::MAX_FRAME;
/// Largest body of `POST /api/publish/batch`: 1 MiB, [`API_MAX_BATCH`] small messages with room
/// to spare, and still one bounded allocation per request.
pub const API_MAX_BATCH_BODY: usize = 1024 * 1024;
/// Messages per batch at most: each gets its own answer in the response, and all of a batch's
/// publishes are in the node's queue towards Redis at once.
pub const API_MAX_BATCH: usize = 100;
/// Longest `type` a backend may publish, bytes: types are names like `quiz_ready`.
pub const API_MAX_TYPE: usize = 64;
/// Frame types a backend may not publish: they are the protocol's own answers, and a client must
/// be able to trust that an `ack` or `error` came from the server about its own frame.
pub const FORBIDDEN_TYPES: [&str; 3] = [protocol::TYPE_ACK, protocol::TYPE_ERROR, protocol::TYPE_RECOVERY];
/// `senderId` of API publishes that name none.
pub const API_SENDER: &str = "server";

/// The API's routes, behind the key check and body limits.
pub(super) fn router(node: Arc<Node>, key: &str) -> Router {
    let key: Arc<[u8]> = Arc::from(key.as_bytes());
    Router::new()
        .route("/api/publish", post(publish_one).layer(DefaultBodyLimit::max(API_MAX_BODY)))
        .route("/api/publish/batch", post(publish_batch).layer(DefaultBodyLimit::max(API_MAX_BATCH_BODY)))
        .route("/api/presence/{user}", get(presence))
        .route("/api/rooms/{room}", get(room))
        .layer(middleware::from_fn_with_state(key, authorize))
        .with_state(node)
}

/// A JSON answer (axum's `Json` needs a feature this crate does not otherwise use).
fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A JSON error answer.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    reply(status, json!({"error": code, "message": message.to_string()}))
}

/// 401 unless the request carries `Authorization: Bearer <key>` (constant-time comparison).
async fn authorize(State(key): State<Arc<[u8]>>, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(given) if bool::from(given.ct_eq(&key)) => next.run(req).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong API key"),
        None => error(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <API key>`"),
    }
}

/// One message to publish, as a backend sends it.
#[derive(Debug, Deserialize)]
struct PublishReq {
    #[serde(rename = "receiverID", alias = "receiverId")]
    receiver: Option<String>,
    room: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    payload: Option<Box<RawValue>>,
    #[serde(rename = "senderId")]
    sender: Option<String>,
    /// Delivered at most once per sender and key within `--idem-window`.
    idempotency_key: Option<String>,
}

/// A request that cannot be published: the HTTP status and the answer.
struct Refused(StatusCode, Value);

impl Refused {
    fn bad(code: &str, message: impl std::fmt::Display) -> Refused {
        Refused(StatusCode::BAD_REQUEST, json!({"error": code, "message": message.to_string()}))
    }
}

/// A publish under way: what was done locally and the broker's ticket.
struct Pending {
    target: Value,
    local: usize,
    ticket: Ticket,
    room: bool,
}

async fn publish_one(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), "too_large", format!("{} (limit {API_MAX_BODY} bytes)", e.body_text())),
    };
    let req: PublishReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e),
    };
    let (status, answer) = match start(&node, req) {
        Ok(p) => finish(&node, p).await,
        Err(Refused(status, answer)) => (status, answer),
    };
    reply(status, answer)
}

#[derive(Debug, Deserialize)]
struct BatchReq {
    messages: Vec<Box<RawValue>>,
}

/// Every message is started (delivered locally, queued towards Redis) before any answer is
/// awaited, then answered in order; one bad message does not fail the others.
async fn publish_batch(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), "too_large", format!("{} (limit {API_MAX_BATCH_BODY} bytes)", e.body_text())),
    };
    let batch: BatchReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e),
    };
    if batch.messages.len() > API_MAX_BATCH {
        return error(StatusCode::BAD_REQUEST, "too_many_messages", format!("{} messages; at most {API_MAX_BATCH} per batch", batch.messages.len()));
    }
    let started: Vec<Result<Pending, Refused>> = batch
        .messages
        .iter()
        .map(|m| serde_json::from_str::<PublishReq>(m.get()).map_err(|e| Refused::bad("bad_json", e)).and_then(|r| start(&node, r)))
        .collect();
    let mut results = Vec::with_capacity(started.len());
    for s in started {
        results.push(match s {
            Ok(p) => finish(&node, p).await.1,
            Err(Refused(_, answer)) => answer,
        });
    }
    reply(StatusCode::OK, json!({ "results": results }))
}

/// Validates a publish, delivers it to this node's connections and hands it to the broker.
fn start(node: &Node, req: PublishReq) -> Result<Pending, Refused> {
    if req.kind.is_empty() || req.kind.len() > API_MAX_TYPE {
        return Err(Refused::bad("bad_type", format!("\"type\" must be 1-{API_MAX_TYPE} bytes")));
    }
    if FORBIDDEN_TYPES.contains(&req.kind.as_str()) {
        return Err(Refused::bad("forbidden_type", format!("{:?} is a protocol frame; backends may not publish it", req.kind)));
    }
    // The socket path's rules for ids (protocol::check_user_id): route keys stay small and
    // `wsctl routes` never prints a terminal escape a backend put into an envelope.
    let sender = req.sender.as_deref().unwrap_or(API_SENDER);
    if protocol::check_user_id(sender).is_err() {
        return Err(Refused::bad("bad_sender", "\"senderId\" must be 1-256 bytes, without control characters"));
    }
    if req.receiver.as_deref().is_some_and(|r| !r.is_empty() && protocol::check_user_id(r).is_err()) {
        return Err(Refused::bad("bad_receiver", "\"receiverID\" must be at most 256 bytes, without control characters"));
    }
    let ts = protocol::timestamp_now();
    let payload = req.payload.as_deref();
    let key = match req.idempotency_key.as_deref() {
        Some(k) => Some(k).filter(|k| protocol::check_idem_key(k).is_ok()).ok_or_else(|| Refused::bad("bad_idempotency_key", "\"idempotency_key\" must be 1-64 bytes without control characters"))?.into(),
        None => None,
    };
    let pending = match (req.receiver.as_deref(), req.room.as_deref()) {
        (Some(user), None) if !user.is_empty() => {
            let envelope = protocol::encode_envelope(&req.kind, payload, user, sender, &ts);
            check_size(node, &envelope)?;
            let msg = Publish { receiver: Arc::from(user), envelope, idem: key.map(|k| idem_key(sender, k)) };
            let Started { local, ticket } = deliver::direct(node, msg, sender, None);
            Pending { target: json!({"receiverID": user}), local, ticket, room: false }
        }
        (None, Some(room)) => {
            if !rooms::valid_name(room) {
                return Err(Refused::bad("bad_room", rooms::RoomError::BadName));
            }
            let envelope = protocol::encode_room_envelope(&req.kind, room, payload, sender, &ts);
            check_size(node, &envelope)?;
            let idem = key.map(|k| RoomIdem { key: room_idem_key(room, sender, k), except: None });
            let Started { local, ticket } = deliver::room(node, room, &envelope, idem, None);
            Pending { target: json!({"room": room}), local, ticket, room: true }
        }
        _ => return Err(Refused::bad("missing_target", "give exactly one of a non-empty \"receiverID\" or \"room\"")),
    };
    node.metrics.messages.inc();
    Ok(pending)
}

fn check_size(node: &Node, envelope: &Frame) -> Result<(), Refused> {
    let limit = node.limits.max_outgoing_frame();
    if envelope.len() > limit {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "too_large", "message": format!("envelope of {} bytes; clients take at most {limit}", envelope.len())}),
        ));
    }
    Ok(())
}

/// Waits for the broker's outcome (bounded by its batch deadline) and builds the answer.
async fn finish(node: &Node, p: Pending) -> (StatusCode, Value) {
    let Pending { mut target, local, ticket, room } = p;
    let result = ticket.await;
    let obj = target.as_object_mut().expect("target is an object");
    obj.insert("local".into(), json!(local));
    match result {
        Ok(routed) => {
            obj.insert("nodes".into(), json!(routed.nodes));
            if routed.duplicate {
                obj.insert("duplicate".into(), json!(true));
            }
            if !room {
                let online = local > 0 || routed.nodes > 0;
                if !online {
                    node.metrics.undeliverable.inc();
                }
                obj.insert("online".into(), json!(online));
            }
            (StatusCode::OK, target)
        }
        Err(e) => {
            let code = if e == PublishError::Overloaded { "overloaded" } else { "unavailable" };
            obj.insert("error".into(), json!(code));
            obj.insert("message".into(), json!(format!("delivered to {local} connection(s) on this node; other nodes: {e}")));
            (StatusCode::SERVICE_UNAVAILABLE, target)
        }
    }
}

/// `GET /api/presence/{user}`: the live nodes holding the user; connection counts exact for this
/// node, as last written to `user_conns:<u>` for others (`null` from a node that writes none).
async fn presence(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    let mut servers = match node.broker.user_nodes(&user).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let here = node.hub.count(&user);
    servers.retain(|(s, _)| **s != *node.id);
    let mut nodes: Vec<Value> = servers.iter().map(|(s, n)| json!({"server": s, "connections": n})).collect();
    if here > 0 {
        nodes.insert(0, json!({"server": &*node.id, "connections": here}));
    }
    reply(StatusCode::OK, json!({"user": user, "online": !nodes.is_empty(), "nodes": nodes}))
}

/// `GET /api/rooms/{room}`: member connections per live node (this node's exact, others' as they
/// last wrote them) and their sum.
async fn room(State(node): State<Arc<Node>>, Path(room): Path<String>) -> Response {
    if !rooms::valid_name(&room) {
        return error(StatusCode::BAD_REQUEST, "bad_room", rooms::RoomError::BadName);
    }
    let mut counts = match node.broker.room_counts(&room).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    counts.retain(|(s, _)| **s != *node.id);
    let here = node.rooms.members(&room) as u64;
    if here > 0 {
        counts.insert(0, (node.id.to_string(), here));
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let nodes: Vec<Value> = counts.iter().map(|(s, n)| json!({"server": s, "members": n})).collect();
    reply(StatusCode::OK, json!({"room": room, "members": total, "nodes": nodes}))
}
