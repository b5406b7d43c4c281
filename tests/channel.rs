//! The bare channel through the C ABI: rcluster_socketpair, rcluster_send_handle,
//! rcluster_recv_handle on real sockets, with real descriptors.

mod common;
use common::*;

use std::ffi::c_void;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

fn pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    ok(rcluster_socketpair(fds.as_mut_ptr()), "socketpair");
    // SAFETY: fresh fds handed to us by rcluster_socketpair.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn send(sock: &OwnedFd, data: &[u8], fds: &[i32]) -> i32 {
    rcluster_send_handle(sock.as_raw_fd(), data.as_ptr() as *const c_void, data.len(), fds.as_ptr(), fds.len(), 5000)
}

struct Received {
    data: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn recv(sock: &OwnedFd, max_fds: usize, timeout_ms: i32) -> Result<Received, i32> {
    let mut data: *mut c_void = ptr::null_mut();
    let mut len = 0usize;
    let mut fds = vec![-1; max_fds];
    let mut nfds = 0usize;
    let rc =
        rcluster_recv_handle(sock.as_raw_fd(), &mut data, &mut len, fds.as_mut_ptr(), max_fds, &mut nfds, timeout_ms);
    if rc != 0 {
        assert_eq!(nfds, 0, "no fds reported on failure");
        return Err(rc);
    }
    let bytes =
        if len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec() };
    ok(rcluster_buffer_free(data, len), "buffer_free");
    // SAFETY: the library hands these fds to us.
    let fds = fds[..nfds].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    Ok(Received { data: bytes, fds })
}

fn temp_file_with(text: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("rcluster-test-{}-{}", std::process::id(), text.len()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn several_fds_travel_with_their_message() {
    let _serial = serial();
    let (a, b) = pair();
    let files: Vec<_> = (0..5).map(|i| temp_file_with(&"x".repeat(i + 1))).collect();
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    ok(send(&a, b"five files", &raw), "send");
    let got = recv(&b, 16, 5000).unwrap();
    assert_eq!(got.data, b"five files");
    assert_eq!(got.fds.len(), 5);
    for (i, fd) in got.fds.into_iter().enumerate() {
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0, "received fds are close-on-exec");
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "x".repeat(i + 1), "fd {i} is the file that was sent");
    }
}

#[test]
fn large_messages_are_reassembled_whole() {
    let _serial = serial();
    let (a, b) = pair();
    for size in [0usize, 1, 65_534, 65_535, 65_536, 1 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let file = temp_file_with("big");
        let sender = {
            let a = a.try_clone().unwrap();
            let data = data.clone();
            let fd = file.as_raw_fd();
            std::thread::spawn(move || send(&a, &data, &[fd]))
        };
        let got = recv(&b, 4, 10_000).unwrap();
        assert_eq!(sender.join().unwrap(), 0, "send of {size} bytes");
        assert_eq!(got.data.len(), size);
        assert!(got.data == data, "payload of {size} bytes intact");
        assert_eq!(got.fds.len(), 1);
    }
}

#[test]
fn too_many_fds_for_the_receiver_are_all_closed() {
    let _serial = serial();
    let (a, b) = pair();
    let before = open_fds();
    let files: Vec<_> = (0..4).map(|i| temp_file_with(&"t".repeat(i + 10))).collect();
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    ok(send(&a, b"four", &raw), "send");
    drop(files);
    assert_eq!(recv(&b, 2, 5000).err(), Some(RCLUSTER_E_TRUNCATED));
    assert_eq!(open_fds(), before, "every fd that arrived was closed");
}

#[test]
fn too_many_fds_to_send_is_an_error() {
    let _serial = serial();
    let (a, _b) = pair();
    let file = temp_file_with("f");
    let raw = vec![file.as_raw_fd(); RCLUSTER_MAX_FDS + 1];
    assert_eq!(send(&a, b"x", &raw), RCLUSTER_E_TOOBIG);
    assert_eq!(send(&a, b"x", &[9999]), RCLUSTER_E_INVAL, "a closed fd is refused");
}

#[test]
fn dead_peer_is_reported_not_hung_on() {
    let _serial = serial();
    let (a, b) = pair();
    drop(b);
    assert_eq!(send(&a, b"anyone?", &[]), RCLUSTER_E_CLOSED);
    let (c, d) = pair();
    drop(c);
    assert_eq!(recv(&d, 0, 5000).err(), Some(RCLUSTER_E_CLOSED));
}

#[test]
fn timeouts_and_nonblocking_receive() {
    let _serial = serial();
    let (_a, b) = pair();
    assert_eq!(recv(&b, 0, 0).err(), Some(RCLUSTER_E_AGAIN));
    assert_eq!(recv(&b, 0, 50).err(), Some(RCLUSTER_E_TIMEOUT));
}

#[test]
fn truncated_records_from_a_foreign_peer_close_their_fds() {
    let _serial = serial();
    // A peer that does not speak our framing sends a record bigger than ours,
    // with an fd attached: MSG_TRUNC, and the fd must not leak.
    let (a, b) = pair();
    let before = open_fds();
    let file = temp_file_with("leak?");
    let big = vec![1u8 | 2u8; 100_000];
    let fd = file.as_raw_fd();
    let mut cmsg = [0u8; 64];
    let mut iov = libc::iovec { iov_base: big.as_ptr() as *mut _, iov_len: big.len() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr() as *mut _;
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd);
        assert!(libc::sendmsg(a.as_raw_fd(), &msg, 0) > 0);
    }
    drop(file);
    assert_eq!(recv(&b, 4, 5000).err(), Some(RCLUSTER_E_TRUNCATED));
    assert_eq!(open_fds(), before, "the fd that arrived with the truncated record was closed");
}

#[test]
fn stream_sockets_and_non_sockets_are_refused() {
    let _serial = serial();
    let mut fds = [-1; 2];
    unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    let (s, _t) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    assert_eq!(send(&s, b"x", &[]), RCLUSTER_E_INVAL);
    assert!(last_error().contains("SEQPACKET"), "{}", last_error());
    let file = temp_file_with("not a socket");
    let not_socket = OwnedFd::from(file);
    assert_eq!(send(&not_socket, b"x", &[]), RCLUSTER_E_INVAL);
    assert_eq!(rcluster_send_handle(-1, ptr::null(), 0, ptr::null(), 0, 0), RCLUSTER_E_INVAL);
    let mut len = 0usize;
    let mut nfds = 0usize;
    assert_eq!(
        rcluster_recv_handle(s.as_raw_fd(), ptr::null_mut(), &mut len, ptr::null_mut(), 0, &mut nfds, 0),
        RCLUSTER_E_INVAL
    );
}
