//! The frames primary and worker exchange over the channel.
//!
//! A frame is one channel message: a type byte, then fixed little-endian
//! fields; strings are a u16 length and UTF-8 bytes. Control frames are small
//! and fixed; `User` frames carry the application's opaque bytes. Decoding
//! checks every length, so a misbehaving peer produces a `Protocol` error,
//! never a panic or an over-read.
//!
//! Compatibility: a field added to a frame after its first version goes at
//! its end and is on the wire only when it is not its default, so a peer of
//! an earlier version still reads every frame that does not use it. The
//! fields added so far, in order:
//! 1. `Listen.index`: which of a worker's port-0 listeners this is.
//! 2. `Share.flags`: how the primary binds a shared UDP socket
//!   (`crate::share::ShareFlags`). A primary of an earlier version reads a
//!   `Share` that carries them as malformed (the worker sees its channel
//!   close), never as a request for a socket without them.

use crate::error::{Code, Error, Result};

const HELLO: u8 = 1;
const LISTEN: u8 = 2;
const UNLISTEN: u8 = 3;
const ACK: u8 = 4;
const GOODBYE: u8 = 5;
const PONG: u8 = 6;
const READY: u8 = 7;
const DONE: u8 = 8;
const ACKS: u8 = 9;
const LOST: u8 = 10;
const SHARE: u8 = 11;
const LISTEN_OK: u8 = 16;
const LISTEN_ERR: u8 = 17;
const CONN: u8 = 18;
const DISCONNECT: u8 = 19;
const PING: u8 = 20;
const SHARE_OK: u8 = 21;
const SELF_ACCEPT: u8 = 22;
const BUSY: u8 = 23;
const USER: u8 = 32;
const USERS: u8 = 33;

/// Policy `hybrid`: a worker that, having taken a connection off the
/// listening socket, finds this many still queued on it calls the primary
/// in (`Busy`); the primary steps out once a window went by in which no
/// accept of its own found as many. Above what a few clients at a time
/// queue while every worker is asleep (`wrk -c4` queues 4 at times).
pub const BUSY_BACKLOG: u32 = 8;

/// One frame. Worker-to-primary, primary-to-worker, or both ways (`User`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Worker → primary: the worker opened its end (Node's `online`).
    Hello { pid: i32 },
    /// Worker → primary: listen on `host:port`; the reply echoes `request`.
    /// `index`: for port 0, which of this worker's port-0 listeners at `host`
    /// this is (every worker's n-th shares one port, as Node's cluster does);
    /// 0 otherwise. On the wire only when not 0, so a primary of an earlier
    /// version still reads the usual frame.
    Listen { request: u32, port: u16, host: String, index: u16 },
    /// Worker → primary: a socket every worker asking for the same
    /// `kind`/`address`/`port` (and, for port 0, `index`) shares, bound
    /// once by the primary (Node's Unix-socket servers and dgram sockets in
    /// a cluster). `kind`: see `crate::share::SocketKind`; `flags`: the
    /// options it is bound with (`crate::share::ShareFlags`), on the wire
    /// only when not 0 (see the module's compatibility note). Both are
    /// checked by the primary, which answers a value it does not know with
    /// `ListenErr`. The reply is `ShareOk` with the fd attached, or `ListenErr`.
    Share { request: u32, kind: u8, port: u16, index: u16, address: String, flags: u8 },
    /// Primary → worker: the shared socket, its fd attached; `port` and
    /// `address` are what it is bound to (a Unix socket's path, port 0).
    ShareOk { request: u32, port: u16, address: String },
    /// Worker → primary: stop sending connections of this listener.
    Unlisten { listener: u32 },
    /// Worker → primary: the connection was taken (`accepted`) or refused, so
    /// the primary closes its copy or hands it to another worker.
    Ack { conn: u64, accepted: bool },
    /// Worker → primary: these connections were taken (one frame for a batch
    /// a worker took at once, so the primary wakes once for all of them).
    Acks { conns: Vec<u64> },
    /// Worker → primary: these connections' fds did not arrive (the worker
    /// is at its fd limit): the primary hands them to a worker again and
    /// gives this one a moment before the next. Not a refusal.
    Lost { conns: Vec<u64> },
    /// Worker → primary: the worker is leaving on purpose (graceful disconnect).
    Goodbye,
    /// Worker → primary: answer to `Ping`, sent by whichever host call
    /// reads the channel, so a worker whose loop is stuck does not answer.
    Pong { seq: u64 },
    /// Worker → primary: the application says it is ready (pm2's `wait_ready`).
    Ready,
    /// Worker → primary: `count` accepted connections are finished (load-aware policy).
    Done { count: u32 },
    /// Primary → worker: listening. With `shared`, the listening fd is attached
    /// and the worker accepts itself; otherwise connections come as `Conn`,
    /// and a listening fd attached all the same (policy `hybrid`) is one the
    /// worker also accepts on itself while the primary lets it (`SelfAccept`).
    /// `report_done`: the policy wants `Done` reports (else they are not sent).
    ListenOk { request: u32, listener: u32, shared: bool, report_done: bool, port: u16, address: String },
    /// Primary → worker: the listen request failed: `code` (with the OS
    /// `errno` when one was involved) and a message. Built by
    /// [`Frame::listen_err`], which keeps it within what the wire carries.
    ///
    /// On the wire, one i32 holds both, so the frame is the one every
    /// earlier version sends and reads: a positive number is an OS errno and
    /// the code is `Address` (all an earlier worker knows); a negative number
    /// is an `RCLUSTER_E_*` code without an errno (`Leaving`, `InvalidArgument`).
    /// An earlier worker reads the latter as an `Address` error whose errno
    /// is that negative number, with the message intact.
    ListenErr { request: u32, code: Code, errno: i32, message: String },
    /// Primary → worker: connections of `listener`, their fds attached in
    /// the same order (at most `channel::MAX_FDS` per frame).
    Conns { listener: u32, conns: Vec<u64> },
    /// Primary → worker: finish what you hold and leave.
    Disconnect,
    /// Primary → worker: heartbeat; answer with `Pong`.
    Ping { seq: u64 },
    /// Primary → worker (policy `hybrid`): accept on the listening socket
    /// that came with the listen yourself (`on`), or leave it to the
    /// primary, which hands connections over (`!on`).
    SelfAccept { listener: u32, on: bool },
    /// Worker → primary (policy `hybrid`): connections are queueing on the
    /// listening socket faster than the workers take them.
    Busy { listener: u32 },
    /// Either way: application bytes.
    User(Vec<u8>),
    /// Either way: several application messages in one record, in order
    /// (small messages sent together cost one system call, not one each).
    Users(Vec<Vec<u8>>),
}

impl Frame {
    /// The reply to listen request `request` that failed with `error`. An
    /// error with an OS errno travels as `Address` with that errno (the
    /// errno says what the OS refused); one without travels as its code.
    pub fn listen_err(request: u32, error: &Error) -> Frame {
        let (code, errno) = if error.errno() > 0 { (Code::Address, error.errno()) } else { (error.code(), 0) };
        Frame::ListenErr { request, code, errno, message: error.message().to_owned() }
    }

    /// The error a `ListenErr` reply stands for (`None` for other frames).
    pub fn listen_error(&self) -> Option<Error> {
        match self {
            Frame::ListenErr { code, errno, message, .. } => {
                Some(Error::new(*code, message.clone()).with_errno(*errno))
            }
            _ => None,
        }
    }

    /// Encodes the frame into bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self {
            Frame::Hello { pid } => {
                out.push(HELLO);
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Frame::Listen { request, port, host, index } => {
                out.push(LISTEN);
                out.extend_from_slice(&request.to_le_bytes());
                out.extend_from_slice(&port.to_le_bytes());
                put_str(&mut out, host);
                if *index != 0 {
                    out.extend_from_slice(&index.to_le_bytes());
                }
            }
            Frame::Share { request, kind, port, index, address, flags } => {
                out.push(SHARE);
                out.extend_from_slice(&request.to_le_bytes());
                out.push(*kind);
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                put_str(&mut out, address);
                if *flags != 0 {
                    out.push(*flags);
                }
            }
            Frame::ShareOk { request, port, address } => {
                out.push(SHARE_OK);
                out.extend_from_slice(&request.to_le_bytes());
                out.extend_from_slice(&port.to_le_bytes());
                put_str(&mut out, address);
            }
            Frame::Unlisten { listener } => {
                out.push(UNLISTEN);
                out.extend_from_slice(&listener.to_le_bytes());
            }
            Frame::Ack { conn, accepted } => {
                out.push(ACK);
                out.extend_from_slice(&conn.to_le_bytes());
                out.push(*accepted as u8);
            }
            Frame::Acks { conns } | Frame::Lost { conns } => {
                out.push(if matches!(self, Frame::Acks { .. }) { ACKS } else { LOST });
                out.extend_from_slice(&(conns.len() as u32).to_le_bytes());
                for conn in conns {
                    out.extend_from_slice(&conn.to_le_bytes());
                }
            }
            Frame::Goodbye => out.push(GOODBYE),
            Frame::Pong { seq } => {
                out.push(PONG);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Frame::Ready => out.push(READY),
            Frame::Done { count } => {
                out.push(DONE);
                out.extend_from_slice(&count.to_le_bytes());
            }
            Frame::Ping { seq } => {
                out.push(PING);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Frame::ListenOk { request, listener, shared, report_done, port, address } => {
                out.push(LISTEN_OK);
                out.extend_from_slice(&request.to_le_bytes());
                out.extend_from_slice(&listener.to_le_bytes());
                out.push(*shared as u8);
                out.push(*report_done as u8);
                out.extend_from_slice(&port.to_le_bytes());
                put_str(&mut out, address);
            }
            Frame::ListenErr { request, code, errno, message } => {
                out.push(LISTEN_ERR);
                out.extend_from_slice(&request.to_le_bytes());
                let status = if *errno > 0 || *code == Code::Address { *errno } else { code.raw() };
                out.extend_from_slice(&status.to_le_bytes());
                put_str(&mut out, message);
            }
            Frame::Conns { listener, conns } => {
                out.push(CONN);
                out.extend_from_slice(&listener.to_le_bytes());
                out.extend_from_slice(&(conns.len() as u16).to_le_bytes());
                for conn in conns {
                    out.extend_from_slice(&conn.to_le_bytes());
                }
            }
            Frame::Disconnect => out.push(DISCONNECT),
            Frame::SelfAccept { listener, on } => {
                out.push(SELF_ACCEPT);
                out.extend_from_slice(&listener.to_le_bytes());
                out.push(*on as u8);
            }
            Frame::Busy { listener } => {
                out.push(BUSY);
                out.extend_from_slice(&listener.to_le_bytes());
            }
            Frame::User(data) => return Frame::encode_user(data),
            Frame::Users(messages) => return Frame::encode_users(messages.iter().map(|m| &m[..])),
        }
        out
    }

    /// Encodes a `User` frame straight from a borrowed slice (one copy).
    pub fn encode_user(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + data.len());
        out.push(USER);
        out.extend_from_slice(data);
        out
    }

    /// Encodes messages, in order, as few frames as fit one record each: a
    /// run of small messages becomes one `Users` frame, a message alone (or
    /// too big to share a record) a `User` frame.
    pub fn pack_users(messages: &[&[u8]]) -> Vec<Vec<u8>> {
        const ROOM: usize = crate::channel::RECORD_PAYLOAD - 5;
        let mut frames = Vec::new();
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut size = 0;
            while end < messages.len() && size + 4 + messages[end].len().min(ROOM) <= ROOM {
                size += 4 + messages[end].len();
                end += 1;
            }
            if end - start <= 1 {
                frames.push(Frame::encode_user(messages[start]));
                start += 1;
            } else {
                frames.push(Frame::encode_users(messages[start..end].iter().copied()));
                start = end;
            }
        }
        frames
    }

    /// Encodes several messages as one `Users` frame.
    pub fn encode_users<'a>(messages: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
        // Saturating: a capacity too large to allocate fails loudly, never wraps small.
        let total = messages.clone().fold(5usize, |sum, m| sum.saturating_add(4).saturating_add(m.len()));
        let mut out = Vec::with_capacity(total);
        out.push(USERS);
        out.extend_from_slice(&(messages.clone().count() as u32).to_le_bytes());
        for message in messages {
            out.extend_from_slice(&(message.len() as u32).to_le_bytes());
            out.extend_from_slice(message);
        }
        out
    }

    /// Decodes a frame, taking ownership of the bytes (a `User` frame reuses
    /// the buffer rather than copying it).
    pub fn decode(mut bytes: Vec<u8>) -> Result<Frame> {
        let Some(&kind) = bytes.first() else {
            return Err(protocol("empty frame"));
        };
        if kind == USER {
            bytes.remove(0);
            return Ok(Frame::User(bytes));
        }
        let mut r = Reader { bytes: &bytes[1..] };
        let frame = match kind {
            HELLO => Frame::Hello { pid: r.i32()? },
            LISTEN => Frame::Listen {
                request: r.u32()?,
                port: r.u16()?,
                host: r.string()?,
                index: if r.bytes.is_empty() { 0 } else { r.u16()? },
            },
            UNLISTEN => Frame::Unlisten { listener: r.u32()? },
            SHARE => Frame::Share {
                request: r.u32()?,
                kind: r.u8()?,
                port: r.u16()?,
                index: r.u16()?,
                address: r.string()?,
                flags: if r.bytes.is_empty() { 0 } else { r.u8()? },
            },
            SHARE_OK => Frame::ShareOk { request: r.u32()?, port: r.u16()?, address: r.string()? },
            ACK => Frame::Ack { conn: r.u64()?, accepted: r.bool()? },
            ACKS | LOST => {
                let count = r.u32()? as usize;
                if count > r.bytes.len() / 8 {
                    return Err(protocol("acks frame shorter than its count"));
                }
                let conns = (0..count).map(|_| r.u64()).collect::<Result<Vec<u64>>>()?;
                if kind == ACKS {
                    Frame::Acks { conns }
                } else {
                    Frame::Lost { conns }
                }
            }
            GOODBYE => Frame::Goodbye,
            PONG => Frame::Pong { seq: r.u64()? },
            READY => Frame::Ready,
            DONE => Frame::Done { count: r.u32()? },
            PING => Frame::Ping { seq: r.u64()? },
            LISTEN_OK => Frame::ListenOk {
                request: r.u32()?,
                listener: r.u32()?,
                shared: r.bool()?,
                report_done: r.bool()?,
                port: r.u16()?,
                address: r.string()?,
            },
            LISTEN_ERR => {
                let request = r.u32()?;
                let (code, errno) = match r.i32()? {
                    // A code this version does not know (a newer primary's) reads as Address.
                    status if status < 0 => (Code::from_c(status).unwrap_or(Code::Address), 0),
                    errno => (Code::Address, errno),
                };
                Frame::ListenErr { request, code, errno, message: r.string()? }
            }
            USERS => {
                let count = r.u32()? as usize;
                let mut messages = Vec::with_capacity(count.min(r.bytes.len() / 4));
                for _ in 0..count {
                    let len = r.u32()? as usize;
                    messages.push(r.take(len)?.to_vec());
                }
                Frame::Users(messages)
            }
            CONN => {
                let listener = r.u32()?;
                let count = r.u16()? as usize;
                let conns = (0..count).map(|_| r.u64()).collect::<Result<Vec<u64>>>()?;
                Frame::Conns { listener, conns }
            }
            DISCONNECT => Frame::Disconnect,
            SELF_ACCEPT => Frame::SelfAccept { listener: r.u32()?, on: r.bool()? },
            BUSY => Frame::Busy { listener: r.u32()? },
            other => return Err(protocol(&format!("unknown frame type {other}"))),
        };
        if !r.bytes.is_empty() {
            return Err(protocol(&format!("{} trailing bytes after frame type {kind}", r.bytes.len())));
        }
        Ok(frame)
    }
}

/// Longest string a frame carries, in bytes. Callers that send a string the
/// peer must see whole (a listen request's host) refuse longer ones first.
pub const MAX_STR: usize = u16::MAX as usize;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Only text whose tail may go (an error message) gets here over the
    // limit: cut it at a character boundary, so it stays valid UTF-8.
    let mut cut = s.len().min(MAX_STR);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&(cut as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..cut]);
}

fn protocol(what: &str) -> Error {
    Error::new(Code::Protocol, format!("malformed frame: {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(protocol("frame shorter than its fields"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn bool(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(protocol(&format!("boolean field holds {other}"))),
        }
    }
    fn string(&mut self) -> Result<String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| protocol("string field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::Hello { pid: 42 },
            Frame::Listen { request: 7, port: 8080, host: "127.0.0.1".into(), index: 0 },
            Frame::Listen { request: 8, port: 0, host: "::1".into(), index: 3 },
            Frame::Unlisten { listener: 3 },
            Frame::Share { request: 9, kind: 1, port: 0, index: 0, address: "/tmp/app.sock".into(), flags: 0 },
            Frame::Share { request: 10, kind: 2, port: 5353, index: 2, address: "127.0.0.1".into(), flags: 0 },
            Frame::Share { request: 11, kind: 3, port: 0, index: 0, address: "::".into(), flags: 3 },
            Frame::Share { request: 12, kind: 3, port: 0, index: 0, address: "::".into(), flags: 0xff },
            Frame::ShareOk { request: 10, port: 5353, address: "127.0.0.1".into() },
            Frame::Ack { conn: u64::MAX, accepted: true },
            Frame::Acks { conns: vec![1, u64::MAX, 3] },
            Frame::Acks { conns: vec![] },
            Frame::Lost { conns: vec![7, 8] },
            Frame::Goodbye,
            Frame::ListenOk {
                request: 7,
                listener: 1,
                shared: true,
                report_done: false,
                port: 9,
                address: "::1".into(),
            },
            Frame::ListenErr { request: 7, code: Code::Address, errno: 98, message: "in use".into() },
            Frame::ListenErr { request: 8, code: Code::Leaving, errno: 0, message: "shutting down".into() },
            Frame::ListenErr { request: 9, code: Code::InvalidArgument, errno: 0, message: "bad host".into() },
            Frame::Conns { listener: 2, conns: vec![99] },
            Frame::Conns { listener: 2, conns: vec![1, 2, 3] },
            Frame::Disconnect,
            Frame::Ping { seq: 5 },
            Frame::Pong { seq: 5 },
            Frame::Ready,
            Frame::Done { count: 3 },
            Frame::SelfAccept { listener: 4, on: true },
            Frame::SelfAccept { listener: 4, on: false },
            Frame::Busy { listener: 4 },
            Frame::User(vec![1, 2, 3]),
            Frame::User(vec![]),
            Frame::Users(vec![b"a".to_vec(), vec![], vec![7; 300]]),
            Frame::Users(vec![]),
        ];
        for frame in frames {
            assert_eq!(Frame::decode(frame.encode()).unwrap(), frame);
        }
    }

    #[test]
    fn an_over_long_string_is_cut_at_a_character_boundary() {
        // 'é' is two bytes: the limit falls inside one.
        let message = "é".repeat(MAX_STR);
        let frame = Frame::ListenErr { request: 1, code: Code::Address, errno: 22, message: message.clone() };
        match Frame::decode(frame.encode()).unwrap() {
            Frame::ListenErr { message: cut, .. } => {
                assert_eq!(cut.len(), MAX_STR - 1);
                assert!(message.starts_with(&cut));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The frame an earlier version sends (errno, no code) reads as an
    /// address error; a code travels in the same bytes, so an earlier
    /// worker still decodes the frame (as an address error).
    #[test]
    fn a_listen_error_carries_its_code_in_the_frame_every_version_reads() {
        let earlier =
            [&[LISTEN_ERR][..], &5u32.to_le_bytes(), &98i32.to_le_bytes(), &2u16.to_le_bytes(), b"no"].concat();
        let frame = Frame::decode(earlier.clone()).unwrap();
        let error = frame.listen_error().unwrap();
        assert_eq!((error.code(), error.errno(), error.message()), (Code::Address, 98, "no"));
        assert_eq!(frame.encode(), earlier, "an address error is the frame an earlier version sends");

        let leaving = Frame::listen_err(5, &Error::new(Code::Leaving, "no"));
        let bytes = leaving.encode();
        assert_eq!(bytes.len(), earlier.len(), "same layout: an earlier worker decodes it");
        let error = Frame::decode(bytes).unwrap().listen_error().unwrap();
        assert_eq!((error.code(), error.errno()), (Code::Leaving, 0));

        // An OS failure travels as Address with its errno.
        let os = Frame::listen_err(5, &Error::new(Code::Os, "dup").with_errno(libc::EMFILE));
        let error = Frame::decode(os.encode()).unwrap().listen_error().unwrap();
        assert_eq!((error.code(), error.errno()), (Code::Address, libc::EMFILE));

        // A code from a newer primary that this version lacks: an address error, not a broken channel.
        let newer = [&[LISTEN_ERR][..], &5u32.to_le_bytes(), &(-99i32).to_le_bytes(), &0u16.to_le_bytes()].concat();
        let error = Frame::decode(newer).unwrap().listen_error().unwrap();
        assert_eq!((error.code(), error.errno()), (Code::Address, 0));
    }

    #[test]
    fn packing_keeps_order_and_fits_records() {
        let big = vec![1u8; 100_000];
        let small: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut messages: Vec<&[u8]> = small.iter().map(|m| &m[..]).collect();
        messages.insert(1500, &big);
        let frames = Frame::pack_users(&messages);
        assert!(frames.len() < 10, "3000 small messages share records ({} frames)", frames.len());
        let mut unpacked = Vec::new();
        for frame in frames {
            match Frame::decode(frame).unwrap() {
                Frame::User(m) => unpacked.push(m),
                Frame::Users(ms) => unpacked.extend(ms),
                other => panic!("{other:?}"),
            }
        }
        assert!(unpacked.iter().map(|m| &m[..]).eq(messages.iter().copied()));
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        for bad in [
            vec![],
            vec![200],
            vec![ACK, 1, 2],
            vec![ACKS, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            vec![ACKS, 255, 255, 255, 255],
            vec![ACK, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            vec![GOODBYE, 0],
            vec![USERS, 2, 0, 0, 0, 1, 0, 0, 0, b'x'],
            vec![USERS, 1, 0, 0, 0, 9, 0, 0, 0, b'x'],
        ] {
            assert_eq!(Frame::decode(bad).unwrap_err().code(), Code::Protocol);
        }
        let mut listen = Frame::Listen { request: 1, port: 1, host: "abc".into(), index: 0 }.encode();
        listen.truncate(listen.len() - 1);
        assert_eq!(Frame::decode(listen).unwrap_err().code(), Code::Protocol);
        let mut listen = Frame::Listen { request: 1, port: 0, host: "abc".into(), index: 2 }.encode();
        listen.truncate(listen.len() - 1); // half an index
        assert_eq!(Frame::decode(listen).unwrap_err().code(), Code::Protocol);
        // Index 0 is the frame a primary of an earlier version knows (no index field).
        let listen = Frame::Listen { request: 1, port: 0, host: "abc".into(), index: 0 }.encode();
        assert_eq!(listen.len(), 1 + 4 + 2 + 2 + 3);
    }

    #[test]
    fn share_flags_travel_only_when_set() {
        let plain = Frame::Share { request: 1, kind: 2, port: 0, index: 0, address: "abc".into(), flags: 0 }.encode();
        assert_eq!(plain.len(), 1 + 4 + 1 + 2 + 2 + 2 + 3, "no flags: the frame of an earlier version");
        let flagged = Frame::Share { request: 1, kind: 2, port: 0, index: 0, address: "abc".into(), flags: 1 }.encode();
        assert_eq!(flagged.len(), plain.len() + 1);
        let mut two = flagged.clone();
        two.push(0); // a second trailing byte is no field of this version
        assert_eq!(Frame::decode(two).unwrap_err().code(), Code::Protocol);
        let mut cut = plain;
        cut.truncate(cut.len() - 1); // half the address
        assert_eq!(Frame::decode(cut).unwrap_err().code(), Code::Protocol);
    }
}
