//! The simulated sled agent and pantry, over real loopback HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use ratchet_sim::{
    CallOutcomeError, Faults, Operation, PantryClient, PantrySim, SledAgentClient, SledAgentSim,
    VmmState,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

fn id() -> Uuid {
    Uuid::new_v4()
}

/// Writes `bytes` on a fresh connection and returns everything the server sends back.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("server answers in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, CallOutcomeError>, needle: &str) {
    match result {
        Err(CallOutcomeError::Refused(message)) => {
            assert!(
                message.contains(needle),
                "refusal {message:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

fn assert_unknown<T: std::fmt::Debug>(result: Result<T, CallOutcomeError>) {
    match result {
        Err(CallOutcomeError::Unknown(_)) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
}

#[test]
fn handles_are_send_sync_and_cheap() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<SledAgentClient>();
    assert_send_sync_clone::<PantryClient>();
    assert_send_sync_clone::<Faults>();
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SledAgentSim>();
    assert_send_sync::<PantrySim>();
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    assert!(SledAgentSim::start().is_err());
    assert!(PantrySim::start().is_err());
}

#[tokio::test]
async fn sled_agent_happy_path() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let (propolis, instance) = (id(), id());

    let vmm = client
        .vmm_ensure(id(), propolis, instance, 1)
        .await
        .expect("ensure");
    assert_eq!(
        (vmm.propolis_id, vmm.instance_id, vmm.generation),
        (propolis, instance, 1)
    );
    assert_eq!(vmm.state, VmmState::Running);
    assert_eq!(sim.vmms(), vec![vmm.clone()]);
    assert_eq!(client.list_vmms().await.expect("list"), vec![vmm]);

    let newer = client
        .vmm_ensure(id(), propolis, instance, 3)
        .await
        .expect("newer generation");
    assert_eq!(newer.generation, 3);
    let same = client
        .vmm_ensure(id(), propolis, instance, 3)
        .await
        .expect("same generation");
    assert_eq!(same, newer);
    assert_refused(
        client.vmm_ensure(id(), propolis, instance, 2).await,
        "stale_generation",
    );
    assert_refused(client.vmm_ensure(id(), propolis, id(), 4).await, "409");
    assert_eq!(sim.vmms(), vec![newer.clone()]);

    let gone = client
        .vmm_unregister(id(), propolis)
        .await
        .expect("unregister");
    assert!(gone.existed);
    assert_eq!(gone.vmm, Some(newer));
    assert!(sim.vmms().is_empty());

    let faults = sim.faults();
    let ensure = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (ensure.received, ensure.applied, ensure.conflicted),
        (5, 3, 2)
    );
    assert_eq!(faults.applied(Operation::VmmUnregister), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn unregister_of_unknown_vmm_succeeds() {
    let sim = SledAgentSim::start().expect("start");
    let gone = sim
        .client()
        .vmm_unregister(id(), id())
        .await
        .expect("unregister");
    assert!(!gone.existed);
    assert_eq!(gone.vmm, None);
}

#[tokio::test]
async fn replay_returns_the_recorded_response_and_applies_once() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let (key, propolis, instance) = (id(), id(), id());

    let first = client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("first");
    // Move the VMM on under another key; a replay of `key` still answers what was answered then.
    client
        .vmm_ensure(id(), propolis, instance, 5)
        .await
        .expect("newer");
    let replay = client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("replay");
    assert_eq!(replay, first);
    assert_eq!(sim.vmms()[0].generation, 5);

    let counters = sim.faults().counters(Operation::VmmEnsure);
    assert_eq!(
        (counters.received, counters.applied, counters.replayed),
        (3, 2, 1)
    );
    assert_eq!(sim.idempotency_records(), 2);

    // Unregister replays the same way, even once the VMM is gone.
    let unregister_key = id();
    let gone = client
        .vmm_unregister(unregister_key, propolis)
        .await
        .expect("unregister");
    assert!(gone.existed);
    let again = client
        .vmm_unregister(unregister_key, propolis)
        .await
        .expect("replayed unregister");
    assert_eq!(again, gone);
    assert_eq!(sim.faults().applied(Operation::VmmUnregister), 1);
}

#[tokio::test]
async fn same_key_with_another_request_is_refused() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let (key, propolis, instance) = (id(), id(), id());
    client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("first");
    assert_refused(
        client.vmm_ensure(key, propolis, instance, 2).await,
        "idempotency_key_reused",
    );
    assert_refused(
        client.vmm_ensure(key, id(), instance, 1).await,
        "idempotency_key_reused",
    );
    assert_refused(
        client.vmm_unregister(key, propolis).await,
        "idempotency_key_reused",
    );
    assert_eq!(sim.vmms().len(), 1);
    assert_eq!(sim.vmms()[0].generation, 1);
    assert_eq!(sim.faults().counters(Operation::VmmEnsure).conflicted, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_apply_once() {
    let sim = SledAgentSim::start().expect("start");
    let (key, propolis, instance) = (id(), id(), id());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = sim.client();
            tokio::spawn(async move { client.vmm_ensure(key, propolis, instance, 1).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("join").expect("ensure"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let counters = sim.faults().counters(Operation::VmmEnsure);
    assert_eq!((counters.applied, counters.replayed), (1, 7));
}

#[tokio::test]
async fn fail_before_apply_is_refused_and_changes_nothing() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (key, propolis, instance) = (id(), id(), id());

    faults.op(Operation::VmmEnsure).fail_before_apply(2);
    assert_refused(
        client.vmm_ensure(key, propolis, instance, 1).await,
        "503 fail_before_apply",
    );
    assert_refused(
        client.vmm_ensure(key, propolis, instance, 1).await,
        "fail_before_apply",
    );
    assert!(sim.vmms().is_empty());
    assert_eq!(sim.idempotency_records(), 0);
    // The knob is for ensure only.
    client
        .vmm_unregister(id(), propolis)
        .await
        .expect("unregister is not faulted");
    // Consumed: the same key now applies.
    client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("third try");
    assert_eq!(sim.vmms().len(), 1);
    let counters = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (
            counters.received,
            counters.failed_before_apply,
            counters.applied
        ),
        (3, 2, 1)
    );

    // A global knob matches every operation.
    faults.fail_before_apply(1);
    assert_refused(
        client.vmm_unregister(id(), propolis).await,
        "fail_before_apply",
    );
    assert_eq!(sim.vmms().len(), 1);
    faults.fail_before_apply(5);
    faults.clear();
    client
        .vmm_unregister(id(), propolis)
        .await
        .expect("cleared");
    assert!(sim.vmms().is_empty());
}

#[tokio::test]
async fn dropped_response_is_unknown_but_applied_and_a_retry_does_not_reapply() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (key, propolis, instance) = (id(), id(), id());

    faults.op(Operation::VmmEnsure).drop_response_after_apply(1);
    assert_unknown(client.vmm_ensure(key, propolis, instance, 1).await);
    assert_eq!(sim.vmms().len(), 1, "applied although the answer was lost");

    let retry = client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("retry");
    assert_eq!(retry, sim.vmms()[0]);
    let counters = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (
            counters.received,
            counters.applied,
            counters.replayed,
            counters.responses_dropped
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn delay_beyond_the_client_timeout_is_unknown() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client().with_timeout(Duration::from_millis(100));
    let faults = sim.faults();
    let (key, propolis, instance) = (id(), id(), id());

    faults.delay(Duration::from_millis(400));
    assert_unknown(client.vmm_ensure(key, propolis, instance, 1).await);
    // The server goes on to apply the request after its delay, though nobody is listening.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sim.vmms().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delayed request was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    faults.clear();
    // The rest uses the default timeout, so that a loaded machine does not make it flaky.
    let client = sim.client();
    let retry = client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("retry");
    assert_eq!(retry, sim.vmms()[0]);
    assert_eq!(faults.applied(Operation::VmmEnsure), 1);

    // A delay shorter than the timeout is just slow.
    faults
        .op(Operation::VmmUnregister)
        .delay(Duration::from_millis(20));
    client
        .vmm_unregister(id(), propolis)
        .await
        .expect("slow but in time");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let sim = SledAgentSim::start().expect("start");
    let addr = sim.addr();
    let propolis = id();
    let mut oversized = b"GET /vmms HTTP/1.1\r\nX-Big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 64 * 1024));
    oversized.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"GET /vmms HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"PUT /vmms/x HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"PUT /vmms/x HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"tru".to_vec(), "HTTP/1.1 400 "),
        (oversized, "HTTP/1.1 431 "),
        (b"POST /vmms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "HTTP/1.1 501 "),
        // Well-formed HTTP, but not an acceptable request.
        (format!("PUT /vmms/{propolis} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(), "HTTP/1.1 400 "),
        (
            format!("PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nContent-Length: 5\r\n\r\n{{bad}}", id())
                .into_bytes(),
            "HTTP/1.1 400 ",
        ),
        (
            format!(
                "PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: not-a-uuid\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .into_bytes(),
            "HTTP/1.1 400 ",
        ),
        (
            format!(
                "PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nContent-Length: 13\r\n\r\n{{\"extra\":true}}",
                id()
            )
            .into_bytes(),
            "HTTP/1.1 400 ",
        ),
        (b"PUT /vmms/not-a-uuid HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"GET /nothing/here HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 404 "),
        (b"POST /vmms HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 405 "),
    ];
    for (bytes, expected) in cases {
        let answer = raw_exchange(addr, &bytes).await;
        assert!(
            answer.starts_with(expected),
            "sent {:?}, expected {expected:?}, got {answer:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        );
        assert!(
            answer.contains("\"applied\":false"),
            "error body missing from {answer:?}"
        );
    }
    // A connection that closes without sending anything, and one that sends half a request.
    drop(TcpStream::connect(addr).await.expect("connect"));
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"PUT /vmms/").await.expect("write");
    drop(half);

    assert!(sim.vmms().is_empty());
    assert_eq!(
        sim.faults().received(Operation::VmmEnsure),
        0,
        "malformed requests are not counted"
    );
    let vmm = sim
        .client()
        .vmm_ensure(id(), propolis, id(), 1)
        .await
        .expect("still serving");
    assert_eq!(sim.vmms(), vec![vmm]);
}

#[tokio::test]
async fn pantry_happy_path() {
    let sim = PantrySim::start().expect("start");
    let client = sim.client();
    let (disk, snapshot_id, attach_key) = (id(), id(), id());
    let volume = json!({"type": "region", "block_size": 512, "targets": ["[::1]:1000"]});

    let attachment = client
        .disk_attach(attach_key, disk, volume.clone())
        .await
        .expect("attach");
    assert_eq!(
        (
            attachment.disk_id,
            &attachment.volume,
            attachment.attached_at_key
        ),
        (disk, &volume, attach_key)
    );
    // Attaching again with the same volume, under a new key, succeeds and answers the existing attachment.
    let again = client
        .disk_attach(id(), disk, volume.clone())
        .await
        .expect("attach again");
    assert_eq!(again, attachment);
    assert_refused(
        client.disk_attach(id(), disk, json!({"other": 1})).await,
        "attached_with_other_volume",
    );

    let snapshot = client
        .disk_snapshot(id(), disk, snapshot_id)
        .await
        .expect("snapshot");
    assert_eq!(
        (snapshot.snapshot_id, snapshot.disk_id),
        (snapshot_id, disk)
    );
    assert_eq!(sim.snapshots(), vec![snapshot.clone()]);
    assert_eq!(sim.attachments(), vec![attachment.clone()]);
    let state = client.state().await.expect("state");
    assert_eq!(state, sim.state());
    assert_eq!(
        (state.attachments, state.snapshots),
        (vec![attachment], vec![snapshot.clone()])
    );

    assert!(
        client
            .disk_detach(id(), disk)
            .await
            .expect("detach")
            .was_attached
    );
    assert!(sim.attachments().is_empty());
    assert_eq!(
        sim.snapshots(),
        vec![snapshot],
        "snapshots outlive the attachment"
    );
    assert!(
        client
            .snapshot_delete(id(), snapshot_id)
            .await
            .expect("delete")
            .existed
    );
    assert!(sim.snapshots().is_empty());

    let faults = sim.faults();
    for (op, applied) in [
        (Operation::DiskAttach, 2),
        (Operation::DiskSnapshot, 1),
        (Operation::DiskDetach, 1),
        (Operation::SnapshotDelete, 1),
    ] {
        assert_eq!(faults.applied(op), applied, "{op}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn pantry_detach_and_delete_of_unknown_succeed() {
    let sim = PantrySim::start().expect("start");
    let client = sim.client();
    assert!(
        !client
            .disk_detach(id(), id())
            .await
            .expect("detach")
            .was_attached
    );
    assert!(
        !client
            .snapshot_delete(id(), id())
            .await
            .expect("delete")
            .existed
    );
}

#[tokio::test]
async fn snapshot_of_an_unattached_disk_is_refused_and_not_recorded() {
    let sim = PantrySim::start().expect("start");
    let client = sim.client();
    let (key, disk, snapshot_id) = (id(), id(), id());
    assert_refused(
        client.disk_snapshot(key, disk, snapshot_id).await,
        "disk_not_attached",
    );
    assert!(sim.snapshots().is_empty());
    assert_eq!(sim.faults().counters(Operation::DiskSnapshot).conflicted, 1);

    // A refusal leaves no record: once the disk is attached, the same key applies.
    client
        .disk_attach(id(), disk, json!({"v": 1}))
        .await
        .expect("attach");
    let snapshot = client
        .disk_snapshot(key, disk, snapshot_id)
        .await
        .expect("snapshot");
    assert_eq!(snapshot.taken_at_key, key);
    // The same snapshot id for another disk is refused.
    let other = id();
    client
        .disk_attach(id(), other, json!({"v": 2}))
        .await
        .expect("attach other");
    assert_refused(
        client.disk_snapshot(id(), other, snapshot_id).await,
        "snapshot_id_in_use",
    );
}

#[tokio::test]
async fn pantry_faults() {
    let sim = PantrySim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (disk, snapshot_id) = (id(), id());
    let volume = json!({"v": 1});

    faults.op(Operation::DiskAttach).fail_before_apply(1);
    assert_refused(
        client.disk_attach(id(), disk, volume.clone()).await,
        "fail_before_apply",
    );
    assert!(sim.attachments().is_empty());
    client
        .disk_attach(id(), disk, volume.clone())
        .await
        .expect("attach");

    let key = id();
    faults
        .op(Operation::DiskSnapshot)
        .drop_response_after_apply(1);
    assert_unknown(client.disk_snapshot(key, disk, snapshot_id).await);
    assert_eq!(sim.snapshots().len(), 1);
    // Detach in between: the retry still gets the recorded answer, not a "not attached" refusal.
    client.disk_detach(id(), disk).await.expect("detach");
    let retry = client
        .disk_snapshot(key, disk, snapshot_id)
        .await
        .expect("retry");
    assert_eq!(sim.snapshots(), vec![retry]);
    let counters = faults.counters(Operation::DiskSnapshot);
    assert_eq!(
        (
            counters.applied,
            counters.replayed,
            counters.responses_dropped
        ),
        (1, 1, 1)
    );

    // Compensation under a lost answer: delete the snapshot, lose the answer, retry.
    let delete_key = id();
    faults.drop_response_after_apply(1);
    assert_unknown(client.snapshot_delete(delete_key, snapshot_id).await);
    assert!(sim.snapshots().is_empty());
    let deleted = client
        .snapshot_delete(delete_key, snapshot_id)
        .await
        .expect("retry delete");
    assert!(
        deleted.existed,
        "the replay answers what the first attempt did"
    );
    assert_eq!(faults.applied(Operation::SnapshotDelete), 1);
}

#[tokio::test]
async fn a_stopped_service_is_unknown() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client().with_timeout(Duration::from_millis(500));
    sim.shutdown().await;
    assert_unknown(client.vmm_ensure(id(), id(), id(), 1).await);
    assert_unknown(client.list_vmms().await);

    let pantry = PantrySim::start().expect("start");
    let client = pantry.client();
    drop(pantry);
    // Dropping aborts the server task; give the runtime a moment to close the listener.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_unknown(client.disk_detach(id(), id()).await);
}

/// A one-shot server that answers each connection with `answer` (or closes it, for `None`).
async fn fake_server(answer: Option<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            if let Some(answer) = answer {
                let _ = stream.write_all(answer).await;
            }
            let _ = stream.shutdown().await;
        }
    });
    addr
}

#[tokio::test]
async fn client_classifies_strange_answers() {
    let cases: [(Option<&'static [u8]>, bool); 6] = [
        (None, false),
        (Some(b"not http at all\r\n\r\n"), false),
        (Some(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnotjson"), false),
        (Some(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"), false),
        (Some(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"trunc"), false),
        (
            Some(b"HTTP/1.1 409 Conflict\r\n\r\n{\"applied\":false,\"code\":\"c\",\"message\":\"m\"}"),
            true,
        ),
    ];
    for (answer, refused) in cases {
        let addr = fake_server(answer).await;
        let result = SledAgentClient::new(addr)
            .vmm_ensure(id(), id(), id(), 1)
            .await;
        if refused {
            assert_refused(result, "409 c: m");
        } else {
            assert_unknown(result);
        }
    }
    // An error document that claims the request was applied is not a refusal.
    let addr = fake_server(Some(
        b"HTTP/1.1 500 Oops\r\nContent-Length: 46\r\n\r\n{\"applied\":true,\"code\":\"x\",\"message\":\"partly\"}",
    ))
    .await;
    assert_unknown(PantryClient::new(addr).disk_detach(id(), id()).await);
}

#[tokio::test]
async fn services_are_independent() {
    let a = SledAgentSim::start().expect("start a");
    let b = SledAgentSim::start().expect("start b");
    assert_ne!(a.addr(), b.addr());
    a.faults().fail_before_apply(1);
    b.client()
        .vmm_ensure(id(), id(), id(), 1)
        .await
        .expect("b is not faulted");
    assert!(a.vmms().is_empty());
    assert_eq!(b.vmms().len(), 1);
}
