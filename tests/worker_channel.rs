//! A worker's side of the channel, driven frame by frame from the test (the
//! test plays the primary): what the worker answers, and when.

use std::os::fd::{AsFd, BorrowedFd};
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

#[test]
fn a_worker_working_through_a_backlog_of_events_still_answers_pings() {
    let (primary, worker_end) = channel::socketpair().unwrap();
    let worker = Worker::from_channel(1, worker_end).unwrap();
    let mut r = Reassembler::new();
    assert!(matches!(read_frames(&mut r, primary.as_fd())[..], [Frame::Hello { .. }]));
    // A backlog of messages in one record; the worker takes the first.
    let backlog: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let slices: Vec<&[u8]> = backlog.iter().map(|m| &m[..]).collect();
    for frame in Frame::pack_users(&slices) {
        channel::send_message(primary.as_fd(), &frame, &[], None).unwrap();
    }
    assert!(matches!(worker.next_event(Some(Duration::ZERO)).unwrap(), Some(WorkerEvent::Message(_))));
    // A ping arrives while the application spends 5 ms on each message.
    channel::send_message(primary.as_fd(), &Frame::Ping { seq: 7 }.encode(), &[], None).unwrap();
    let mut answered_after = None;
    for handled in 1..=10 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(worker.next_event(Some(Duration::ZERO)).unwrap(), Some(WorkerEvent::Message(_))));
        if read_frames(&mut r, primary.as_fd()).contains(&Frame::Pong { seq: 7 }) {
            answered_after = Some(handled);
            break;
        }
    }
    // 48 messages are still queued: the answer must not wait for them.
    assert!(answered_after.is_some(), "no pong while 10 of the 49 queued messages were handled");
}
