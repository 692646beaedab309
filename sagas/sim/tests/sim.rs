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
        .vmm_unregister(id(), None, propolis)
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
        .vmm_unregister(id(), None, id())
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
        .vmm_unregister(unregister_key, None, propolis)
        .await
        .expect("unregister");
    assert!(gone.existed);
    let again = client
        .vmm_unregister(unregister_key, None, propolis)
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
        client.vmm_unregister(key, None, propolis).await,
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
        .vmm_unregister(id(), None, propolis)
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
        client.vmm_unregister(id(), None, propolis).await,
        "fail_before_apply",
    );
    assert_eq!(sim.vmms().len(), 1);
    faults.fail_before_apply(5);
    faults.clear();
    client
        .vmm_unregister(id(), None, propolis)
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
        .vmm_unregister(id(), None, propolis)
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
    // A head that does not parse is answered by hyper itself: a bare status, no error document.
    let unparseable: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (
            b"GET /vmms HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            b"PUT /vmms/x HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            b"PUT /vmms/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (oversized, "HTTP/1.1 431 "),
    ];
    // A head that parses gets the service's error document, whatever is wrong after it.
    let parseable: Vec<(Vec<u8>, &str)> = vec![
        (b"PUT /vmms/x HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"tru".to_vec(), "HTTP/1.1 400 "),
        (b"PUT /vmms/x HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n{}".to_vec(), "HTTP/1.1 413 "),
        (b"PUT /vmms/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n".to_vec(), "HTTP/1.1 400 "),
        // hyper decodes chunked bodies: this one is read in full, and refused for its method.
        (b"POST /vmms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "HTTP/1.1 405 "),
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
    let cases = (unparseable
        .into_iter()
        .map(|(bytes, expected)| (bytes, expected, false)))
    .chain(
        parseable
            .into_iter()
            .map(|(bytes, expected)| (bytes, expected, true)),
    );
    for (bytes, expected, documented) in cases {
        let answer = raw_exchange(addr, &bytes).await;
        assert!(
            answer.starts_with(expected),
            "sent {:?}, expected {expected:?}, got {answer:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        );
        assert!(
            !documented || answer.contains("\"applied\":false"),
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
            .disk_detach(id(), None, disk)
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
            .snapshot_delete(id(), None, snapshot_id)
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
            .disk_detach(id(), None, id())
            .await
            .expect("detach")
            .was_attached
    );
    assert!(
        !client
            .snapshot_delete(id(), None, id())
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
    client.disk_detach(id(), None, disk).await.expect("detach");
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
    assert_unknown(client.snapshot_delete(delete_key, None, snapshot_id).await);
    assert!(sim.snapshots().is_empty());
    let deleted = client
        .snapshot_delete(delete_key, None, snapshot_id)
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
    let addr = pantry.addr();
    drop(pantry);
    // Dropping aborts the server task, which closes the listener on its next poll: wait for a refused connect.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped pantry still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_unknown(client.disk_detach(id(), None, id()).await);
}

/// What a fake server does with each connection once it has read the request.
#[derive(Debug, Clone, Copy)]
enum Fake {
    /// Closes the connection (a FIN) without answering.
    Close,
    /// Resets the connection without answering.
    Reset,
    /// Writes these bytes, then closes.
    Answer(&'static [u8]),
}

/// A server that treats each connection as `fake` says.
async fn fake_server(fake: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            match fake {
                Fake::Close => {}
                Fake::Reset => {
                    // Dropped with a zero linger, the socket sends a reset instead of a FIN.
                    stream.set_zero_linger().expect("SO_LINGER");
                    continue;
                }
                Fake::Answer(answer) => {
                    let _ = stream.write_all(answer).await;
                }
            }
            let _ = stream.shutdown().await;
        }
    });
    addr
}

#[tokio::test]
async fn client_classifies_strange_answers() {
    let cases: [(Fake, bool); 7] = [
        (Fake::Close, false),
        (Fake::Reset, false),
        (Fake::Answer(b"not http at all\r\n\r\n"), false),
        (Fake::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnotjson"), false),
        (Fake::Answer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"), false),
        (Fake::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"trunc"), false),
        (
            Fake::Answer(b"HTTP/1.1 409 Conflict\r\n\r\n{\"applied\":false,\"code\":\"c\",\"message\":\"m\"}"),
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
    let addr = fake_server(Fake::Answer(
        b"HTTP/1.1 500 Oops\r\nContent-Length: 46\r\n\r\n{\"applied\":true,\"code\":\"x\",\"message\":\"partly\"}",
    ))
    .await;
    assert_unknown(PantryClient::new(addr).disk_detach(id(), None, id()).await);
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

/// Asserts a tombstone refusal: a permanent 409 that names `key` and says it was compensated.
fn assert_tombstoned<T: std::fmt::Debug>(result: Result<T, CallOutcomeError>, key: Uuid) {
    match result {
        Err(error @ CallOutcomeError::Refused(_)) => {
            let message = error.message();
            assert!(
                message.starts_with("409 idempotency_key_compensated: "),
                "not a tombstone refusal: {message:?}"
            );
            assert!(
                message.contains(&format!("idempotency key {key} was compensated")),
                "refusal {message:?} does not name the compensated key {key}"
            );
            assert!(!error.is_retryable(), "a tombstone refusal is permanent");
        }
        other => panic!("expected a tombstone refusal of {key}, got {other:?}"),
    }
}

#[tokio::test]
async fn compensation_tombstones_an_applied_forward_key_whose_answer_was_lost() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (key, compensation_key, propolis, instance) = (id(), id(), id(), id());

    // The forward call is applied, its answer lost: the caller does not know.
    faults.op(Operation::VmmEnsure).drop_response_after_apply(1);
    assert_unknown(client.vmm_ensure(key, propolis, instance, 1).await);
    assert_eq!(sim.vmms().len(), 1);
    assert_eq!(sim.tombstones(), 0);

    // The caller compensates by key, naming the forward key.
    let gone = client
        .vmm_unregister(compensation_key, Some(key), propolis)
        .await
        .expect("compensate");
    assert!(gone.existed, "the lost ensure had been applied");
    assert!(sim.vmms().is_empty());
    assert_eq!(sim.tombstones(), 1);

    // A late duplicate of the forward request: the record would replay it, the tombstone refuses it.
    assert_tombstoned(client.vmm_ensure(key, propolis, instance, 1).await, key);
    assert_tombstoned(client.vmm_ensure(key, propolis, instance, 1).await, key);
    assert!(sim.vmms().is_empty(), "the VMM stays gone");
    // Under a tombstoned key, even a request that is not the forward one is refused.
    assert_tombstoned(client.vmm_unregister(key, None, propolis).await, key);

    // The compensation itself still replays (its own key is not tombstoned), and tombstones nothing new.
    let again = client
        .vmm_unregister(compensation_key, Some(key), propolis)
        .await
        .expect("replayed compensation");
    assert_eq!(again, gone);
    // The same compensation key naming another forward key is another request.
    assert_refused(
        client
            .vmm_unregister(compensation_key, Some(id()), propolis)
            .await,
        "409 idempotency_key_reused",
    );
    assert_eq!(sim.tombstones(), 1);

    let ensure = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (
            ensure.received,
            ensure.applied,
            ensure.replayed,
            ensure.conflicted,
            ensure.refused_tombstoned,
            ensure.responses_dropped
        ),
        (3, 1, 0, 0, 2, 1),
        "{ensure:?}"
    );
    let unregister = faults.counters(Operation::VmmUnregister);
    assert_eq!(
        (
            unregister.received,
            unregister.applied,
            unregister.replayed,
            unregister.conflicted,
            unregister.refused_tombstoned
        ),
        (4, 1, 1, 1, 1),
        "{unregister:?}"
    );
    // The ensure under `key` and the compensation: tombstoning keeps the record, it just wins over it.
    assert_eq!(sim.idempotency_records(), 2);
}

#[tokio::test]
async fn compensation_of_a_never_applied_key_blocks_it_later() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (key, propolis, instance) = (id(), id(), id());

    // The forward request never arrived (or has not yet); the compensation is applied all the same.
    let gone = client
        .vmm_unregister(id(), Some(key), propolis)
        .await
        .expect("compensate");
    assert!(!gone.existed);
    assert_eq!(sim.tombstones(), 1);

    assert_tombstoned(client.vmm_ensure(key, propolis, instance, 1).await, key);
    assert!(sim.vmms().is_empty(), "nothing created");
    let ensure = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (ensure.received, ensure.applied, ensure.refused_tombstoned),
        (1, 0, 1),
        "{ensure:?}"
    );
    // Only the compensation is recorded.
    assert_eq!(sim.idempotency_records(), 1);
}

#[tokio::test]
async fn a_refused_compensation_leaves_no_tombstone() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (key, compensation_key, propolis, instance) = (id(), id(), id(), id());

    faults.op(Operation::VmmUnregister).fail_before_apply(1);
    assert_refused(
        client
            .vmm_unregister(compensation_key, Some(key), propolis)
            .await,
        "503 fail_before_apply",
    );
    assert_eq!(sim.tombstones(), 0, "a compensation that was not applied");
    // So the forward key is still free...
    client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("ensure");
    // ...until the compensation's retry is applied.
    let gone = client
        .vmm_unregister(compensation_key, Some(key), propolis)
        .await
        .expect("compensate");
    assert!(gone.existed);
    assert_eq!(sim.tombstones(), 1);
    assert_tombstoned(client.vmm_ensure(key, propolis, instance, 1).await, key);
    assert!(sim.vmms().is_empty());
    assert_eq!(faults.counters(Operation::VmmEnsure).refused_tombstoned, 1);
}

#[tokio::test]
async fn a_delayed_forward_request_arriving_after_its_compensation_is_refused() {
    let sim = SledAgentSim::start().expect("start");
    let faults = sim.faults();
    let (key, propolis, instance) = (id(), id(), id());

    // The forward request waits at the service longer than its caller does.
    faults
        .op(Operation::VmmEnsure)
        .delay(Duration::from_millis(400));
    let impatient = sim.client().with_timeout(Duration::from_millis(100));
    assert_unknown(impatient.vmm_ensure(key, propolis, instance, 1).await);

    // The caller compensates while the request is still waiting.
    let gone = sim
        .client()
        .vmm_unregister(id(), Some(key), propolis)
        .await
        .expect("compensate");
    assert!(
        !gone.existed,
        "compensated before the forward request was handled"
    );

    // The delayed request is then handled, and refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while faults.counters(Operation::VmmEnsure).refused_tombstoned == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delayed request was never handled: {:?}",
            faults.counters(Operation::VmmEnsure)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sim.vmms().is_empty(),
        "the late request did not re-create the VMM"
    );
    let ensure = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (ensure.received, ensure.applied, ensure.refused_tombstoned),
        (1, 0, 1),
        "{ensure:?}"
    );
}

#[tokio::test]
async fn pantry_compensations_tombstone_attach_and_snapshot_keys() {
    let sim = PantrySim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (disk, snapshot_id, attach_key, snapshot_key) = (id(), id(), id(), id());
    let volume = json!({"v": 1});

    faults.drop_response_after_apply(2);
    assert_unknown(client.disk_attach(attach_key, disk, volume.clone()).await);
    assert_unknown(client.disk_snapshot(snapshot_key, disk, snapshot_id).await);
    assert_eq!((sim.attachments().len(), sim.snapshots().len()), (1, 1));

    // Undo, in reverse, each naming the key it compensates.
    assert!(
        client
            .snapshot_delete(id(), Some(snapshot_key), snapshot_id)
            .await
            .expect("delete")
            .existed
    );
    assert!(
        client
            .disk_detach(id(), Some(attach_key), disk)
            .await
            .expect("detach")
            .was_attached
    );
    assert_eq!(sim.tombstones(), 2);

    // Late duplicates of both forward requests are refused and change nothing.
    assert_tombstoned(
        client.disk_attach(attach_key, disk, volume.clone()).await,
        attach_key,
    );
    assert_tombstoned(
        client.disk_snapshot(snapshot_key, disk, snapshot_id).await,
        snapshot_key,
    );
    assert_eq!(sim.state(), Default::default(), "nothing re-created");
    for op in [Operation::DiskAttach, Operation::DiskSnapshot] {
        let counters = faults.counters(op);
        assert_eq!(
            (
                counters.received,
                counters.applied,
                counters.replayed,
                counters.refused_tombstoned
            ),
            (2, 1, 0, 1),
            "{op}: {counters:?}"
        );
    }

    // An unrelated key still works: the same attach under a new key is applied.
    let new_key = id();
    let attachment = client
        .disk_attach(new_key, disk, volume.clone())
        .await
        .expect("attach under an unrelated key");
    assert_eq!(attachment.attached_at_key, new_key);
    assert_eq!(sim.attachments(), vec![attachment]);
    assert_eq!(faults.applied(Operation::DiskAttach), 2);
    assert_eq!(faults.counters(Operation::DiskAttach).refused_tombstoned, 1);
    // A detach as a forward step of its own tombstones nothing.
    client
        .disk_detach(id(), None, disk)
        .await
        .expect("plain detach");
    assert_eq!(sim.tombstones(), 2);
}

#[tokio::test]
async fn unrelated_keys_are_not_tombstoned() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let (key, other_key, propolis, instance) = (id(), id(), id(), id());

    client
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("ensure");
    client
        .vmm_unregister(id(), Some(key), propolis)
        .await
        .expect("compensate");
    assert_tombstoned(client.vmm_ensure(key, propolis, instance, 1).await, key);

    // Another key, for the same VMM: applied.
    let vmm = client
        .vmm_ensure(other_key, propolis, instance, 1)
        .await
        .expect("an unrelated key still works");
    assert_eq!(sim.vmms(), vec![vmm.clone()]);
    assert_eq!(
        client
            .vmm_ensure(other_key, propolis, instance, 1)
            .await
            .expect("and replays"),
        vmm
    );
    // A tombstone is per service: another sled agent knows nothing of it.
    let other = SledAgentSim::start().expect("start other");
    other
        .client()
        .vmm_ensure(key, propolis, instance, 1)
        .await
        .expect("another service");
    assert_eq!(other.tombstones(), 0);

    let ensure = sim.faults().counters(Operation::VmmEnsure);
    assert_eq!(
        (
            ensure.received,
            ensure.applied,
            ensure.replayed,
            ensure.refused_tombstoned
        ),
        (4, 2, 1, 1),
        "{ensure:?}"
    );
    assert_eq!(sim.tombstones(), 1);
}

#[tokio::test]
async fn compensates_header_is_validated() {
    let sim = SledAgentSim::start().expect("start");
    let addr = sim.addr();
    let (propolis, key) = (id(), id());
    let body = format!("{{\"instance_id\":\"{}\",\"generation\":1}}", id());
    let cases = [
        // A forward operation is not a compensation.
        format!(
            "PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nX-Compensates-Key: {}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            id(),
            id(),
            body.len()
        ),
        format!(
            "DELETE /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nX-Compensates-Key: nope\r\n\r\n",
            id()
        ),
        // A compensation needs a key of its own.
        format!(
            "DELETE /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {key}\r\nx-compensates-key: {key}\r\n\r\n"
        ),
    ];
    for request in cases {
        let answer = raw_exchange(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 ")
                && answer.contains("\"applied\":false")
                && answer.contains("bad_compensates_key"),
            "sent {request:?}, got {answer:?}"
        );
    }
    assert_eq!(sim.tombstones(), 0);
    assert!(sim.vmms().is_empty());
    assert!(sim.faults().all_counters().is_empty(), "not counted");

    // The header name is case-insensitive, and a well-formed one is honoured.
    let forward = id();
    let answer = raw_exchange(
        addr,
        format!(
            "DELETE /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nx-compensates-key: {forward}\r\n\r\n",
            id()
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(sim.tombstones(), 1);
    assert_tombstoned(
        sim.client().vmm_ensure(forward, propolis, id(), 1).await,
        forward,
    );
}

/// A `PUT /vmms/{propolis}` under `key`, as raw bytes with a `Content-Length` body.
fn raw_ensure(key: Uuid, propolis: Uuid, instance: Uuid, generation: u64) -> Vec<u8> {
    let body = format!("{{\"instance_id\":\"{instance}\",\"generation\":{generation}}}");
    format!(
        "PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of a raw answer: everything after the head.
fn raw_body(answer: &str) -> &str {
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no head end in {answer:?}"))
}

#[tokio::test]
async fn a_dropped_response_closes_the_connection_without_a_byte() {
    let sim = SledAgentSim::start().expect("start");
    let faults = sim.faults();
    let request = raw_ensure(id(), id(), id(), 1);

    faults.op(Operation::VmmEnsure).drop_response_after_apply(1);
    let answer = raw_exchange(sim.addr(), &request).await;
    assert_eq!(answer, "", "a lost response sends nothing at all");
    let counters = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (
            counters.received,
            counters.applied,
            counters.responses_dropped
        ),
        (1, 1, 1)
    );
    assert_eq!(sim.vmms().len(), 1, "applied although the answer was lost");

    // The knob was for one response: the same request is now answered, from the record.
    let answer = raw_exchange(sim.addr(), &request).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    let counters = faults.counters(Operation::VmmEnsure);
    assert_eq!((counters.applied, counters.replayed), (1, 1));
}

#[tokio::test]
async fn a_replay_is_the_recorded_answer_byte_for_byte() {
    let sim = SledAgentSim::start().expect("start");
    let (key, propolis, instance) = (id(), id(), id());
    let first = raw_exchange(sim.addr(), &raw_ensure(key, propolis, instance, 1)).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first:?}");
    // Move the VMM on under another key: answering the replay afresh would say generation 5.
    sim.client()
        .vmm_ensure(id(), propolis, instance, 5)
        .await
        .expect("newer");
    let replay = raw_exchange(sim.addr(), &raw_ensure(key, propolis, instance, 1)).await;
    assert!(replay.starts_with("HTTP/1.1 200 "), "{replay:?}");
    assert_eq!(raw_body(&replay), raw_body(&first));
    assert!(raw_body(&replay).contains("\"generation\":1"), "{replay:?}");
    assert_eq!(sim.faults().counters(Operation::VmmEnsure).replayed, 1);
}

#[tokio::test]
async fn a_chunked_request_body_is_read_like_any_other() {
    let sim = SledAgentSim::start().expect("start");
    let (propolis, instance) = (id(), id());
    let body = format!("{{\"instance_id\":\"{instance}\",\"generation\":7}}");
    let (a, b) = body.split_at(10);
    let request = format!(
        "PUT /vmms/{propolis} HTTP/1.1\r\nIdempotency-Key: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        id(),
        a.len(),
        b.len()
    );
    let answer = raw_exchange(sim.addr(), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(sim.vmms().len(), 1);
    assert_eq!(sim.vmms()[0].generation, 7);
}

#[tokio::test]
async fn one_request_per_connection() {
    let sim = SledAgentSim::start().expect("start");
    let request = "GET /vmms HTTP/1.1\r\nHost: sim\r\n\r\n";
    let answer = raw_exchange(sim.addr(), format!("{request}{request}").as_bytes()).await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "a second request on the connection was answered: {answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn dropping_the_sim_abandons_the_requests_it_was_handling() {
    let sim = SledAgentSim::start().expect("start");
    let faults = sim.faults();
    faults.delay(Duration::from_millis(300));
    let client = sim.client();
    let call = tokio::spawn(async move { client.vmm_ensure(id(), id(), id(), 1).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while faults.received(Operation::VmmEnsure) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sim);
    assert_unknown(call.await.expect("join"));
    // Not synchronisation but an observation window: twice the delay the request was waiting out, had its
    // handling survived the drop, it would have been applied by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        faults.applied(Operation::VmmEnsure),
        0,
        "a stopped service applied a request"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The generation form: no idempotency key; idempotent by propolis id and generation; a removal fences.

/// A lost answer, then retries: the VMM is created once, the retry finds it at its generation (replayed,
/// not applied again), and the books name the VMM once.
#[tokio::test]
async fn by_generation_a_lost_answer_and_its_retry_apply_once() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (propolis, instance) = (id(), id());

    faults.op(Operation::VmmEnsure).drop_response_after_apply(1);
    assert_unknown(client.vmm_ensure_at_generation(propolis, instance, 1).await);
    let retry = client
        .vmm_ensure_at_generation(propolis, instance, 1)
        .await
        .expect("retry");
    assert_eq!(retry, sim.vmms()[0]);
    let counters = faults.counters(Operation::VmmEnsure);
    assert_eq!(
        (counters.received, counters.applied, counters.replayed),
        (2, 1, 1),
        "{counters:?}"
    );
    assert_eq!(faults.applied_keys(Operation::VmmEnsure), vec![propolis]);
    assert_eq!(
        sim.idempotency_records(),
        0,
        "the generation form keeps no keys"
    );
}

/// The tombstone by generation: a compensation that unregisters and fences generation 1 refuses the late
/// duplicate of the ensure it undoes (delayed past its caller's timeout), in either form, while a newer
/// generation is still accepted.
#[tokio::test]
async fn by_generation_a_late_ensure_after_its_fencing_unregister_is_refused() {
    let sim = SledAgentSim::start().expect("start");
    let faults = sim.faults();
    let (propolis, instance) = (id(), id());

    faults
        .op(Operation::VmmEnsure)
        .delay(Duration::from_millis(400));
    let impatient = sim.client().with_timeout(Duration::from_millis(100));
    assert_unknown(
        impatient
            .vmm_ensure_at_generation(propolis, instance, 1)
            .await,
    );

    let gone = sim
        .client()
        .vmm_unregister_fencing(propolis, 1)
        .await
        .expect("compensate");
    assert!(!gone.existed, "compensated before the ensure was handled");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while faults.counters(Operation::VmmEnsure).conflicted == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delayed ensure was never handled: {:?}",
            faults.counters(Operation::VmmEnsure)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sim.vmms().is_empty(), "the late ensure re-created the VMM");
    faults.clear();
    assert_refused(
        sim.client()
            .vmm_ensure_at_generation(propolis, instance, 1)
            .await,
        "vmm_fenced",
    );
    assert_refused(
        sim.client().vmm_ensure(id(), propolis, instance, 1).await,
        "vmm_fenced",
    );
    let newer = sim
        .client()
        .vmm_ensure_at_generation(propolis, instance, 2)
        .await
        .expect("a newer generation");
    assert_eq!(newer.generation, 2);
}

/// After a dropped answer with refusals armed, the retries of that request are refused: the fault knob
/// names a keyless request by its resource.
#[tokio::test]
async fn by_generation_a_dropped_answer_then_refused_retries() {
    let sim = SledAgentSim::start().expect("start");
    let client = sim.client();
    let faults = sim.faults();
    let (propolis, instance) = (id(), id());

    faults.op(Operation::VmmEnsure).drop_response_then_refuse(2);
    assert_unknown(client.vmm_ensure_at_generation(propolis, instance, 1).await);
    assert_refused(
        client.vmm_ensure_at_generation(propolis, instance, 1).await,
        "fail_before_apply",
    );
    assert_refused(
        client.vmm_ensure_at_generation(propolis, instance, 1).await,
        "fail_before_apply",
    );
    assert_eq!(sim.vmms().len(), 1, "the first request was applied");
    let removed = client
        .vmm_unregister_fencing(propolis, 1)
        .await
        .expect("compensate");
    assert!(removed.existed);
    assert!(sim.vmms().is_empty());
}

/// The generation form takes no `X-Compensates-Key`, and its bodies are checked.
#[tokio::test]
async fn by_generation_requests_are_validated() {
    let sim = SledAgentSim::start().expect("start");
    let propolis = id();
    let answer = raw_exchange(
        sim.addr(),
        format!(
            "DELETE /vmms/{propolis} HTTP/1.1\r\nHost: x\r\nX-Compensates-Key: {}\r\nContent-Type: \
             application/json\r\nContent-Length: 22\r\n\r\n{{\"fence_generation\":1}}",
            id()
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_compensates_key"), "{answer}");
    let answer = raw_exchange(
        sim.addr(),
        format!("DELETE /vmms/{propolis} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_body"), "{answer}");
}
