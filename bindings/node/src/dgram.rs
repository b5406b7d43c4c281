//! A UDP socket the primary shares (a `dgram` socket bound in a worker,
//! `lib/shared_sockets.js`), served by the addon: for runtimes whose own
//! dgram does not adopt an fd (Deno's: "Unsupported fd type"). A thread
//! waits for datagrams and hands each to JS through a threadsafe function;
//! sends are `sendto` on the JS thread, non-blocking (a full send buffer is
//! an EAGAIN error, never a wait). `lib/native_dgram.js` makes it a
//! `dgram.Socket` for the program.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;

use crate::gate::Gate;

/// Large enough for any UDP datagram (the IPv4 and IPv6 payload limits are
/// under 64 KiB), so none is truncated.
const RECEIVE_BUFFER: usize = 65536;

/// What the receiving thread hands to JS.
enum Received {
    Datagram(Vec<u8>, SocketAddr),
    Failed(String),
}

/// A datagram (`data`, from `address`/`family`/`port`), or `error`: the
/// receiving thread has ended.
#[napi(object)]
pub struct DgramEvent {
    pub data: Option<Buffer>,
    pub address: Option<String>,
    pub family: Option<String>,
    pub port: Option<u32>,
    pub error: Option<String>,
}

/// A local or remote address as Node's dgram reports one.
#[napi(object)]
pub struct DgramAddress {
    pub address: String,
    pub family: String,
    pub port: u32,
}

impl From<SocketAddr> for DgramAddress {
    fn from(addr: SocketAddr) -> Self {
        DgramAddress { address: addr.ip().to_string(), family: family(&addr).into(), port: addr.port() as u32 }
    }
}

fn family(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A socket option's level and name for setsockopt.
type SockOpt = (i32, i32);

/// The socket options JS may set, by the names `lib/native_dgram.js` uses:
/// (level, option) for an IPv4 socket, then for an IPv6 one.
const OPTIONS: &[(&str, SockOpt, SockOpt)] = &[
    ("broadcast", (libc::SOL_SOCKET, libc::SO_BROADCAST), (libc::SOL_SOCKET, libc::SO_BROADCAST)),
    ("ttl", (libc::IPPROTO_IP, libc::IP_TTL), (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)),
    ("multicastTTL", (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL), (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS)),
    ("multicastLoopback", (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP), (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP)),
    ("recvBufferSize", (libc::SOL_SOCKET, libc::SO_RCVBUF), (libc::SOL_SOCKET, libc::SO_RCVBUF)),
    ("sendBufferSize", (libc::SOL_SOCKET, libc::SO_SNDBUF), (libc::SOL_SOCKET, libc::SO_SNDBUF)),
];

/// A failed system call as JS reads it: the negated errno (as libuv returns them).
fn negated_errno(error: &std::io::Error) -> i32 {
    -error.raw_os_error().unwrap_or(libc::EIO)
}

struct DgramState {
    socket: UdpSocket,
    /// The socket's own family (a shared socket is bound: it has one).
    ipv6: bool,
    gate: Gate,
}

impl DgramState {
    fn receive_loop(&self, deliver: impl Fn(Received)) {
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        while self.gate.wait_readable(self.socket.as_raw_fd()) {
            // Everything queued now, then back to poll: the socket is
            // non-blocking, and other workers may take a datagram first.
            loop {
                match self.socket.recv_from(&mut buffer) {
                    Ok((size, from)) => deliver(Received::Datagram(buffer[..size].to_vec(), from)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => break,
                    // An ICMP error a send of ours earned (port unreachable...):
                    // it concerns that send, not this socket; keep receiving.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                    Err(e) => {
                        deliver(Received::Failed(format!("recvfrom on the shared UDP socket: {e}")));
                        return;
                    }
                }
            }
        }
    }

    /// The destination as this socket can send to it (an IPv4 address from
    /// an IPv6 socket goes as its mapped address).
    fn destination(&self, address: &str, port: u32) -> Result<SocketAddr> {
        let ip: IpAddr =
            address.parse().map_err(|_| Error::new(Status::InvalidArg, format!("{address:?} is not an IP address")))?;
        let port =
            u16::try_from(port).map_err(|_| Error::new(Status::InvalidArg, format!("port {port} is out of range")))?;
        let ip = match ip {
            IpAddr::V4(v4) if self.ipv6 => IpAddr::V6(v4.to_ipv6_mapped()),
            ip => ip,
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// setsockopt with `value` (an int or a C struct): 0, or a negated errno.
    fn set<T>(&self, level: i32, option: i32, value: &T) -> i32 {
        // SAFETY: setsockopt reads `size_of::<T>()` bytes from a live reference.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                level,
                option,
                value as *const T as *const libc::c_void,
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            0
        } else {
            negated_errno(&std::io::Error::last_os_error())
        }
    }

    fn option(&self, name: &str) -> Result<SockOpt> {
        OPTIONS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v4, v6)| if self.ipv6 { *v6 } else { *v4 })
            .ok_or_else(|| Error::new(Status::InvalidArg, format!("no socket option {name:?}")))
    }
}

/// A UDP socket the primary shares, served by a thread of the addon. It owns
/// the fd it is given: `close` (or collection) closes it once the thread has
/// ended; the primary's and other workers' copies stay open.
#[napi]
pub struct NativeDgram {
    state: Mutex<Option<Arc<DgramState>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[napi]
impl NativeDgram {
    /// Takes `fd`, a bound UDP socket (from `NativeWorker.share`), now this
    /// object's to close; refused (and left to the caller) if it is not one.
    #[napi(constructor)]
    pub fn new(fd: i32) -> Result<NativeDgram> {
        if !fd_is_datagram_socket(fd) {
            return Err(Error::new(Status::InvalidArg, format!("fd {fd} is not an open datagram socket")));
        }
        // SAFETY: JS hands this fd over (the caller no longer uses it), and
        // it was just found to be an open socket.
        let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let ipv6 = socket.local_addr().map_err(|e| Error::from_reason(format!("getsockname: {e}")))?.is_ipv6();
        socket.set_nonblocking(true).map_err(|e| Error::from_reason(format!("fcntl: {e}")))?;
        let state = DgramState { socket, ipv6, gate: Gate::new()? };
        Ok(NativeDgram { state: Mutex::new(Some(Arc::new(state))), thread: Mutex::new(None) })
    }

    fn open(&self) -> Result<Arc<DgramState>> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::new(Status::GenericFailure, "the socket is closed"))
    }

    /// Starts the thread; each datagram, or an error that ends it, goes to
    /// `onMessage`.
    #[napi]
    pub fn start(&self, on_message: Function<DgramEvent, ()>) -> Result<()> {
        let state = self.open()?;
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_some() {
            return Err(Error::new(Status::GenericFailure, "already started"));
        }
        let tsfn = on_message
            .build_threadsafe_function::<Received>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(|ctx| {
                Ok(match ctx.value {
                    Received::Datagram(data, from) => DgramEvent {
                        data: Some(data.into()),
                        address: Some(from.ip().to_string()),
                        family: Some(family(&from).into()),
                        port: Some(from.port() as u32),
                        error: None,
                    },
                    Received::Failed(reason) => {
                        DgramEvent { data: None, address: None, family: None, port: None, error: Some(reason) }
                    }
                })
            })?;
        let handle = std::thread::Builder::new()
            .name("rcluster-node-share-dgram".into())
            .spawn(move || {
                state.receive_loop(|received| {
                    tsfn.call(received, ThreadsafeFunctionCallMode::NonBlocking);
                })
            })
            .map_err(|e| Error::from_reason(format!("spawning the receiving thread: {e}")))?;
        *thread = Some(handle);
        Ok(())
    }

    /// Sends `data` as one datagram to `address` (an IP address) and `port`:
    /// the bytes sent, or a negated errno (EMSGSIZE for an oversized
    /// datagram, EAGAIN when the send buffer is full). Throws when closed
    /// or given an address that is not an IP address.
    #[napi]
    pub fn send(&self, data: Buffer, address: String, port: u32) -> Result<i32> {
        let state = self.open()?;
        let to = state.destination(&address, port)?;
        Ok(match state.socket.send_to(&data, to) {
            Ok(sent) => sent as i32,
            Err(e) => negated_errno(&e),
        })
    }

    /// Sends `data` as one datagram to the address the socket is connected
    /// to: the bytes sent, or a negated errno (as `send`).
    #[napi]
    pub fn send_connected(&self, data: Buffer) -> Result<i32> {
        let state = self.open()?;
        Ok(match state.socket.send(&data) {
            Ok(sent) => sent as i32,
            Err(e) => negated_errno(&e),
        })
    }

    /// Connects the socket to `address` (an IP address) and `port`, as
    /// Node's `connect` does (for every process sharing it, as in Node): 0,
    /// or a negated errno.
    #[napi]
    pub fn connect(&self, address: String, port: u32) -> Result<i32> {
        let state = self.open()?;
        let to = state.destination(&address, port)?;
        Ok(state.socket.connect(to).map_or_else(|e| negated_errno(&e), |()| 0))
    }

    /// Dissolves the connection (a connect to AF_UNSPEC): 0, or a negated errno.
    #[napi]
    pub fn disconnect(&self) -> Result<i32> {
        let state = self.open()?;
        // SAFETY: an all-zero sockaddr is valid; AF_UNSPEC is 0.
        let unspecified: libc::sockaddr = unsafe { std::mem::zeroed() };
        // SAFETY: connect reads `size_of::<sockaddr>()` bytes from a local.
        let rc = unsafe {
            libc::connect(
                state.socket.as_raw_fd(),
                &unspecified,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        Ok(if rc == 0 { 0 } else { negated_errno(&std::io::Error::last_os_error()) })
    }

    /// The address the socket is connected to.
    #[napi]
    pub fn remote_address(&self) -> Result<DgramAddress> {
        let state = self.open()?;
        let peer = state.socket.peer_addr().map_err(|e| Error::from_reason(format!("getpeername: {e}")))?;
        Ok(peer.into())
    }

    /// A duplicate of the socket's fd (close-on-exec), now JS's to close:
    /// what a message carries when the program sends this socket.
    #[napi]
    pub fn dup_fd(&self) -> Result<i32> {
        let state = self.open()?;
        let copy = state.socket.try_clone().map_err(|e| Error::from_reason(format!("dup: {e}")))?;
        Ok(OwnedFd::from(copy).into_raw_fd())
    }

    /// The socket's local address.
    #[napi]
    pub fn address(&self) -> Result<DgramAddress> {
        let state = self.open()?;
        let local = state.socket.local_addr().map_err(|e| Error::from_reason(format!("getsockname: {e}")))?;
        Ok(local.into())
    }

    /// Sets an option of `OPTIONS` (by name): 0, or a negated errno.
    #[napi]
    pub fn set_option(&self, name: String, value: i32) -> Result<i32> {
        let state = self.open()?;
        let (level, option) = state.option(&name)?;
        Ok(state.set(level, option, &value))
    }

    /// The interface outgoing multicast leaves from, as Node's
    /// `setMulticastInterface` takes it (see `Interface`): 0, or a negated
    /// errno (EINVAL for what is not an IP address).
    #[napi]
    pub fn set_multicast_interface(&self, interface: String) -> Result<i32> {
        let state = self.open()?;
        Ok(match Interface::parse(&interface) {
            Some(Interface::V4(address)) => {
                let value = libc::in_addr { s_addr: u32::from_ne_bytes(address.octets()) };
                state.set(libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &value)
            }
            Some(Interface::V6(index)) => state.set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &(index as i32)),
            None => -libc::EINVAL,
        })
    }

    /// Reads an option of `OPTIONS` (by name): its value, or a negated errno.
    #[napi]
    pub fn get_option(&self, name: String) -> Result<i32> {
        let state = self.open()?;
        let (level, option) = state.option(&name)?;
        let mut value: i32 = 0;
        let mut size = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `size` bytes into a local int.
        let rc = unsafe {
            libc::getsockopt(
                state.socket.as_raw_fd(),
                level,
                option,
                &mut value as *mut i32 as *mut libc::c_void,
                &mut size,
            )
        };
        Ok(if rc == 0 { value } else { negated_errno(&std::io::Error::last_os_error()) })
    }

    /// Joins (`join`: true) or leaves the multicast group `group` on
    /// `interface` (an IPv4 group: the interface's IPv4 address; an IPv6
    /// group: an IPv6 address naming it, see `Interface`; none: the
    /// default), as libuv does for Node: 0, or a negated errno (EINVAL for
    /// what is not an address of the group's family).
    #[napi]
    pub fn membership(&self, join: bool, group: String, interface: Option<String>) -> Result<i32> {
        let state = self.open()?;
        let Ok(group) = group.parse::<IpAddr>() else { return Ok(-libc::EINVAL) };
        // No interface: the default; one that does not parse: EINVAL below.
        let interface = interface.as_deref().map(Interface::parse);
        let result = match (group, interface) {
            (IpAddr::V4(group), None | Some(Some(Interface::V4(_)))) => {
                let address = match interface {
                    Some(Some(Interface::V4(address))) => address,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                if join {
                    state.socket.join_multicast_v4(&group, &address)
                } else {
                    state.socket.leave_multicast_v4(&group, &address)
                }
            }
            (IpAddr::V6(group), None | Some(Some(Interface::V6(_)))) => {
                let index = match interface {
                    Some(Some(Interface::V6(index))) => index,
                    _ => 0,
                };
                if join {
                    state.socket.join_multicast_v6(&group, index)
                } else {
                    state.socket.leave_multicast_v6(&group, index)
                }
            }
            _ => return Ok(-libc::EINVAL),
        };
        Ok(result.map_or_else(|e| negated_errno(&e), |()| 0))
    }

    /// Stops receiving and closes this copy of the socket (the primary's and
    /// other workers' stay open); the thread has ended first (it only ever
    /// waits in poll, which `stop` wakes). Idempotent.
    #[napi]
    pub fn close(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(state) = &state {
            state.gate.stop();
        }
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        // The thread's reference is gone with it: this drop closes the fd.
        drop(state);
    }
}

impl Drop for NativeDgram {
    fn drop(&mut self) {
        self.close();
    }
}

/// A multicast interface as libuv reads one for Node: an IPv4 address, or
/// an IPv6 address with an optional `%` scope naming the interface (an
/// index also; an unknown name is 0, the default, as libuv takes it).
#[derive(Clone, Copy)]
enum Interface {
    V4(Ipv4Addr),
    V6(u32),
}

impl Interface {
    fn parse(text: &str) -> Option<Interface> {
        if let Ok(address) = text.parse::<Ipv4Addr>() {
            return Some(Interface::V4(address));
        }
        let (address, scope) = text.split_once('%').unwrap_or((text, ""));
        address.parse::<Ipv6Addr>().ok()?;
        if scope.is_empty() {
            return Some(Interface::V6(0));
        }
        if let Ok(index) = scope.parse() {
            return Some(Interface::V6(index));
        }
        let Ok(name) = std::ffi::CString::new(scope) else { return Some(Interface::V6(0)) };
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        Some(Interface::V6(unsafe { libc::if_nametoindex(name.as_ptr()) }))
    }
}

/// Whether `fd` is an open datagram socket (what the constructor may take).
fn fd_is_datagram_socket(fd: i32) -> bool {
    let mut kind: i32 = 0;
    let mut size = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `size` bytes into a local int; a bad
    // or closed fd, or one that is not a socket, is an error, not UB.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, &mut kind as *mut i32 as *mut libc::c_void, &mut size)
    };
    fd >= 0 && rc == 0 && kind == libc::SOCK_DGRAM
}
