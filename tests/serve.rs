//! `wsctl serve` alone (in-process broker): the protocol as a client sees it, bad input,
//! slow consumers, idle connections and drain. Real WebSocket clients over loopback.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsctl::Limits;

#[tokio::test]
async fn http_endpoints_answer_like_the_original() {
    let node = TestNode::start("solo", None).await;
    assert_eq!(http_get(node.addr, "/ws").await.unwrap(), (400, "missing userId".to_string()));
    assert_eq!(http_get(node.addr, "/ws?userId=").await.unwrap(), (400, "missing userId".to_string()));
    assert_eq!(http_get(node.addr, "/health").await.unwrap().0, 200);
    assert_eq!(http_get(node.addr, "/ready").await.unwrap().0, 200);
    node.stop().await;
}

#[tokio::test]
async fn chat_reaches_every_connection_of_the_receiver_and_is_never_echoed() {
    let node = TestNode::start("solo", None).await;
    let mut alice = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob1 = node.connect("bob").await;
    let mut bob2 = node.connect("bob").await;
    alice
        .send(json!({"type":"chat_message","receiverID":"bob","payload":[1,"x"],"senderId":"mallory","timestamp":"forged"}))
        .await;
    for bob in [&mut bob1, &mut bob2] {
        let got = bob.recv().await;
        assert_eq!(got["payload"], json!([1, "x"]));
        assert_eq!(got["senderId"], "alice", "senderId is overwritten with the connected user");
        assert_ne!(got["timestamp"], "forged", "timestamp is overwritten");
        assert!(wsctl::protocol::parse_timestamp(got["timestamp"].as_str().unwrap()).is_some());
    }
    // To oneself: the user's other connections get it, the sending connection does not.
    alice.send(chat("alice", json!("note to self"))).await;
    assert_eq!(alice2.recv().await["payload"], "note to self");
    alice.expect_silence(Duration::from_millis(200)).await;
    node.stop().await;
}

#[tokio::test]
async fn acks_say_whether_the_receiver_was_online() {
    let node = TestNode::start("solo", None).await;
    let mut alice = node.connect("alice").await;
    let _bob = node.connect("bob").await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":1,"id":"m1"})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":"m1","online":true}));
    alice.send(json!({"type":"chat_message","receiverID":"nobody","payload":1,"id":2})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":2,"online":false}));
    assert_eq!(node.metrics.undeliverable.get(), 1);
    alice.send(json!({"type":"heartbeat","id":3})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":3}));
    alice.send(json!({"type":"heartbeat"})).await;
    alice.send(json!({"type":"latency_report","payload":12.5,"id":4})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":4}), "a heartbeat without id gets no reply");
    let exposition = node.metrics.render();
    assert!(exposition.contains("wss_client_latency_ms_count 1\n"), "one latency sample recorded:\n{exposition}");
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_connection_stays_open() {
    let node = TestNode::start("solo", None).await;
    let mut c = node.connect("alice").await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("not json"), "bad_json"),
        (Message::text("[1,2,3]"), "not_object"),
        (Message::text("{\"payload\":1}"), "missing_type"),
        (Message::text("{\"type\":\"teleport\",\"id\":9}"), "unknown_type"),
        (Message::text("{\"type\":\"chat_message\",\"payload\":1}"), "missing_receiver"),
        (Message::text("{\"type\":\"chat_message\",\"receiverID\":\"\"}"), "missing_receiver"),
        (Message::text("{\"type\":\"latency_report\",\"payload\":\"fast\"}"), "bad_payload"),
        (Message::text("{\"type\":\"latency_report\",\"payload\":-3}"), "bad_payload"),
        (Message::binary(vec![0xff, 0xfe, 0x7b]), "invalid_utf8"),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        c.send_raw(frame).await;
        let err = c.recv().await;
        assert_eq!(err["type"], "error", "{shown}");
        assert_eq!(err["code"], code, "{shown}: {err}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // The id is echoed in errors.
    c.send(json!({"type":"teleport","id":{"k":1}})).await;
    assert_eq!(c.recv().await["id"], json!({"k":1}));
    // Binary frames carrying JSON work like text frames.
    let mut bob = node.connect("bob").await;
    c.send_raw(Message::binary(br#"{"type":"chat_message","receiverID":"bob","payload":"bin"}"#.to_vec())).await;
    assert_eq!(bob.recv().await["payload"], "bin");
    assert_eq!(node.metrics.bad_frames.get(), 10);
    node.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_is_answered_then_closed_with_1009() {
    let limits = Limits { max_frame: 1024, ..test_limits() };
    let node = TestNode::start_with("solo", None, limits).await;
    let mut c = node.connect("alice").await;
    let big = json!({"type":"chat_message","receiverID":"bob","payload":"x".repeat(2000)});
    c.send(big).await;
    let (frames, closed) = c.until_closed(RECV_TIMEOUT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "too_large");
    assert_eq!(closed, Closed::Code(1009));
    node.stop().await;
}

#[tokio::test]
async fn a_text_frame_with_invalid_utf8_is_answered_then_closed_with_1007() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start("solo", None).await;
    let mut c = node.connect("alice").await;
    // tungstenite refuses to send invalid UTF-8 as text, so write the masked frame by hand.
    let payload = [0xffu8, 0xfe];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let stream = match c.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    stream.write_all(&frame).await.unwrap();
    let (frames, closed) = c.until_closed(RECV_TIMEOUT).await;
    assert_eq!(frames.first().map(|f| f["code"].clone()), Some(json!("invalid_utf8")), "{frames:?}");
    assert_eq!(closed, Closed::Code(1007));
    node.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4008_and_a_fast_one_keeps_receiving() {
    let limits = Limits { send_queue: 16, ..test_limits() };
    let node = TestNode::start_with("solo", None, limits).await;
    let mut sender = node.connect("alice").await;
    let mut slow = node.connect("bob").await; // never reads until the end
    let mut fast = node.connect("bob").await;
    // 16 KiB frames: a few MB fill the slow client's socket buffers, then its queue of 16.
    const N: usize = 600;
    let payload = "y".repeat(16 * 1024);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let f = fast.recv().await;
            assert_eq!(f["payload"]["n"], got, "in order, none lost");
            got += 1;
        }
        fast
    });
    for n in 0..N {
        sender.send(chat("bob", json!({"n": n, "pad": payload}))).await;
    }
    let mut fast = reader.await.unwrap();
    let (_, closed) = slow.until_closed(Duration::from_secs(10)).await;
    assert_eq!(closed, Closed::Code(4008));
    assert_eq!(node.metrics.slow_consumer_closes.get(), 1);
    // The fast connection is still routed and open.
    sender.send(chat("bob", json!("still here"))).await;
    assert_eq!(fast.recv().await["payload"], "still here");
    node.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let limits = Limits { ping_interval: Duration::from_millis(200), idle_timeout: Duration::from_millis(700), ..test_limits() };
    let node = TestNode::start_with("solo", None, limits).await;
    let mut live = node.connect("alice").await;
    let mut silent = node.connect("bob").await;
    // `live` keeps reading, so tungstenite answers the server's pings; `silent` reads nothing.
    live.expect_silence(Duration::from_millis(1500)).await;
    let (_, closed) = silent.until_closed(RECV_TIMEOUT).await;
    assert_eq!(closed, Closed::Code(1001));
    live.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(live.recv().await["type"], "ack", "the answering connection stays open");
    let m = node.metrics.clone();
    eventually(RECV_TIMEOUT, "the idle close counted", || {
        let m = m.clone();
        async move { m.unexpected_disconnects.get() == 1 }
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn drain_flushes_what_is_queued_then_closes_with_1012() {
    let node = TestNode::start("solo", None).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    const N: usize = 200;
    for n in 0..N {
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":n,"id":n})).await;
    }
    // Every message was accepted (acked) before the drain starts.
    for n in 0..N {
        assert_eq!(alice.recv().await["id"], n);
    }
    node.shutdown.cancel();
    let (frames, closed) = bob.until_closed(RECV_TIMEOUT).await;
    let got: Vec<usize> = frames.iter().map(|f| f["payload"].as_u64().unwrap() as usize).collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "nothing queued is lost");
    assert_eq!(closed, Closed::Code(1012));
    assert_eq!(alice.until_closed(RECV_TIMEOUT).await.1, Closed::Code(1012));
    node.stop().await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_counts_as_expected() {
    let node = TestNode::start("solo", None).await;
    let mut c = node.connect("alice").await;
    c.ws.close(None).await.unwrap();
    // tungstenite returns Close once the server's echo arrives; a reset would be an error.
    let echo = tokio::time::timeout(RECV_TIMEOUT, futures_util::StreamExt::next(&mut c.ws)).await.unwrap();
    assert!(matches!(echo, Some(Ok(Message::Close(_))) | None), "{echo:?}");
    let m = node.metrics.clone();
    eventually(RECV_TIMEOUT, "the connection is gone", || {
        let m = m.clone();
        async move { m.active_connections.get() == 0 }
    })
    .await;
    assert_eq!(node.metrics.unexpected_disconnects.get(), 0);
    node.stop().await;
}
