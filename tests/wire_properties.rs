//! Property tests of what a peer can put on the channel: the frame decoder
//! and the record reassembly, fed random input (bounded: a few thousand
//! cases, a few seconds). Nothing may panic, every valid frame round-trips,
//! and every fd that arrives is either handed over or closed.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use proptest::prelude::*;
use rcluster::channel::{self, Read, Reassembler, FIRST, LAST, MAX_FDS, RECORD_PAYLOAD};
use rcluster::wire::{Frame, MAX_STR};
use rcluster::{Code, Error};

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "[a-z:.0-9]{0,16}"]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<i32>().prop_map(|pid| Frame::Hello { pid }),
        (any::<u32>(), any::<u16>(), small_string(), any::<u16>())
            .prop_map(|(request, port, host, index)| Frame::Listen { request, port, host, index }),
        any::<u32>().prop_map(|listener| Frame::Unlisten { listener }),
        (any::<u64>(), any::<bool>()).prop_map(|(conn, accepted)| Frame::Ack { conn, accepted }),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(|conns| Frame::Acks { conns }),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(|conns| Frame::Lost { conns }),
        Just(Frame::Goodbye),
        any::<u64>().prop_map(|seq| Frame::Pong { seq }),
        Just(Frame::Ready),
        any::<u32>().prop_map(|count| Frame::Done { count }),
        (any::<u32>(), any::<u32>(), any::<bool>(), any::<bool>(), any::<u16>(), small_string()).prop_map(
            |(request, listener, shared, report_done, port, address)| Frame::ListenOk {
                request,
                listener,
                shared,
                report_done,
                port,
                address
            }
        ),
        (any::<u32>(), prop::sample::select(Code::ALL), 0..4096i32, small_string()).prop_map(
            |(request, code, errno, message)| Frame::listen_err(request, &Error::new(code, message).with_errno(errno))
        ),
        (any::<u32>(), prop::collection::vec(any::<u64>(), 0..16))
            .prop_map(|(listener, conns)| Frame::Conns { listener, conns }),
        Just(Frame::Disconnect),
        any::<u64>().prop_map(|seq| Frame::Ping { seq }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Frame::User),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..10).prop_map(Frame::Users),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_frame_round_trips(frame in frame()) {
        prop_assert_eq!(Frame::decode(frame.encode()).unwrap(), frame);
    }

    #[test]
    fn random_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = Frame::decode(bytes) {
            prop_assert_eq!(e.code(), Code::Protocol);
        }
    }

    #[test]
    fn damaged_frames_decode_or_fail_cleanly(
        frame in frame(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = frame.encode();
        let at = flip.index(bytes.len());
        bytes[at] ^= 1 << bit;
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Err(e) = Frame::decode(bytes) {
            prop_assert_eq!(e.code(), Code::Protocol);
        }
    }

    #[test]
    fn strings_of_any_length_encode_as_valid_utf8(repeat in 0usize..40_000, wide in any::<bool>()) {
        let message = if wide { "é".repeat(repeat) } else { "a".repeat(repeat * 2) };
        let frame = Frame::ListenErr { request: 1, code: Code::Address, errno: 0, message: message.clone() };
        match Frame::decode(frame.encode()).unwrap() {
            Frame::ListenErr { message: cut, .. } => {
                prop_assert!(cut.len() <= MAX_STR);
                prop_assert!(message.starts_with(&cut));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

/// One record a misbehaving peer might write: any header flags, any length
/// up to a record, up to a few fds.
#[derive(Debug, Clone)]
struct RawRecord {
    header: u8,
    len: usize,
    fds: usize,
}

fn raw_record() -> impl Strategy<Value = RawRecord> {
    (prop_oneof![Just(FIRST | LAST), Just(FIRST), Just(0u8), Just(LAST), any::<u8>()], 0..RECORD_PAYLOAD, 0usize..3)
        .prop_map(|(header, len, fds)| RawRecord { header, len, fds })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: socketpair into a local array; both fds are wrapped at once.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn reassembly_of_random_records_never_panics_or_leaks(
        records in prop::collection::vec(raw_record(), 1..12),
        limit in prop_oneof![Just(usize::MAX), 1usize..200_000],
    ) {
        // Serialized by a lock: the fd count is the process's.
        let _guard = FD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let before = open_fds();
        {
            let (a, b) = seqpacket_pair();
            let file = std::fs::File::open("/dev/null").unwrap();
            let mut sent = 0;
            for record in &records {
                let payload = vec![record.header; record.len];
                let fds = vec![file.as_raw_fd(); record.fds.min(MAX_FDS)];
                if channel::send_record(a.as_fd(), record.header, &payload, &fds).is_err() {
                    break; // the socket buffer is full: read what was sent
                }
                sent += 1;
            }
            drop(a);
            let mut reassembler = Reassembler::with_limit(limit);
            let mut messages = Vec::new();
            for _ in 0..=sent {
                match reassembler.read(b.as_fd()) {
                    Ok(Read::Message(message)) => {
                        prop_assert!(message.data.len() <= limit.min(channel::MAX_MESSAGE));
                        messages.push(message);
                    }
                    Ok(Read::Eof) | Ok(Read::WouldBlock) => break,
                    Err(e) => prop_assert!(
                        matches!(e.code(), Code::Protocol | Code::TooBig),
                        "unexpected error {:?}", e
                    ),
                }
            }
            drop(messages);
        }
        prop_assert_eq!(open_fds(), before, "every fd that arrived was handed over or closed");
    }
}

static FD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
