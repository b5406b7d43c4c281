//! A worker's side of the channel, driven frame by frame from the test (the
//! test plays the primary): what the worker answers, and when.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rcluster::channel::{self, Read, Reassembler};
use rcluster::wire::Frame;
use rcluster::{Worker, WorkerEvent};

fn read_frames(r: &mut Reassembler, fd: BorrowedFd<'_>) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Read::Message(m)) = r.read(fd) {
        out.push(Frame::decode(m.data).unwrap());
    }
    out
}

/// A worker on one end of a channel whose other end the test reads as the
/// primary, past the worker's hello.
fn opened_worker() -> (OwnedFd, Worker, Reassembler) {
    let (primary, worker_end) = channel::socketpair().unwrap();
    let worker = Worker::from_channel(1, worker_end).unwrap();
    let mut r = Reassembler::new();
    assert!(matches!(read_frames(&mut r, primary.as_fd())[..], [Frame::Hello { .. }]));
    (primary, worker, r)
}

#[test]
fn a_worker_working_through_a_backlog_of_events_still_answers_pings() {
    let (primary, worker, mut r) = opened_worker();
    // A backlog of messages in one record; the worker takes the first.
    let backlog: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let slices: Vec<&[u8]> = backlog.iter().map(|m| &m[..]).collect();
    for frame in Frame::pack_users(&slices) {
        channel::send_message(primary.as_fd(), &frame, &[], None).unwrap();
    }
    assert!(matches!(worker.next_event(Some(Duration::ZERO)).unwrap(), Some(WorkerEvent::Message { .. })));
    // A ping arrives while the application spends 5 ms on each message.
    channel::send_message(primary.as_fd(), &Frame::Ping { seq: 7 }.encode(), &[], None).unwrap();
    let mut answered_after = None;
    for handled in 1..=10 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(worker.next_event(Some(Duration::ZERO)).unwrap(), Some(WorkerEvent::Message { .. })));
        if read_frames(&mut r, primary.as_fd()).contains(&Frame::Pong { seq: 7 }) {
            answered_after = Some(handled);
            break;
        }
    }
    // 48 messages are still queued: the answer must not wait for them.
    assert!(answered_after.is_some(), "no pong while 10 of the 49 queued messages were handled");
}

/// `listen` run on a thread while the test, as the primary, answers its
/// request with listener `id` bound at 127.0.0.1:`bound`; returns the
/// listener and the port and index the request carried.
fn listen_answered(
    primary: BorrowedFd<'_>,
    r: &mut Reassembler,
    id: u32,
    bound: u16,
    listen: impl FnOnce() -> rcluster::Result<rcluster::Listener> + Send + 'static,
) -> (rcluster::Listener, u16, u16) {
    let asked = std::thread::spawn(listen);
    let (request, port, index) = loop {
        match r.read_blocking(primary, Some(Duration::from_secs(10))).unwrap() {
            Read::Message(m) => match Frame::decode(m.data).unwrap() {
                Frame::Listen { request, port, index, .. } => break (request, port, index),
                Frame::Unlisten { .. } => {} // from a close before this listen
                other => panic!("expected a listen request, got {other:?}"),
            },
            other => panic!("expected a listen request, got {other:?}"),
        }
    };
    let reply = Frame::ListenOk {
        request,
        listener: id,
        shared: false,
        report_done: false,
        port,
        address: format!("127.0.0.1:{bound}"),
    };
    channel::send_message(primary, &reply.encode(), &[], None).unwrap();
    (asked.join().unwrap().unwrap(), port, index)
}

#[test]
fn a_paused_port_0_listener_keeps_its_place_until_closed() {
    let (primary, worker, mut r) = opened_worker();
    let w = worker.clone();
    let (first, _, index) = listen_answered(primary.as_fd(), &mut r, 1, 40001, move || w.listen("127.0.0.1", 0, None));
    assert_eq!(index, 0);
    assert!(first.resume(None).is_err(), "an open listener does not resume");
    first.pause();
    assert_eq!(read_frames(&mut r, primary.as_fd()), vec![Frame::Unlisten { listener: 1 }]);
    // Paused, it still holds index 0: a new port-0 listen is the second.
    let w = worker.clone();
    let (second, _, index) = listen_answered(primary.as_fd(), &mut r, 2, 40002, move || w.listen("127.0.0.1", 0, None));
    assert_eq!(index, 1, "a port-0 listen made during the pause took the paused listener's place");
    // Resuming asks for the paused listener's own port; the new one holds the place.
    let paused = std::sync::Arc::new(first);
    let p = paused.clone();
    let (resumed, port, index) = listen_answered(primary.as_fd(), &mut r, 1, 40001, move || p.resume(None));
    assert_eq!((port, index, resumed.address().port()), (40001, 0, 40001));
    paused.close(); // the place went to `resumed`: closing the paused one frees nothing
    second.close();
    let w = worker.clone();
    let (third, _, index) = listen_answered(primary.as_fd(), &mut r, 3, 40003, move || w.listen("127.0.0.1", 0, None));
    assert_eq!(index, 2, "index 0 is still held by the resumed listener");
    resumed.close();
    third.close();
    let w = worker.clone();
    let (fourth, _, index) = listen_answered(primary.as_fd(), &mut r, 4, 40004, move || w.listen("127.0.0.1", 0, None));
    assert_eq!(index, 0, "with every port-0 listener closed the count starts again");
    // A paused listener that is closed, not resumed, gives its place up.
    fourth.pause();
    fourth.close();
    let w = worker.clone();
    let (_fifth, _, index) = listen_answered(primary.as_fd(), &mut r, 5, 40005, move || w.listen("127.0.0.1", 0, None));
    assert_eq!(index, 0, "closing a paused listener frees its place");
}
