'use strict';
// Under Deno: a dgram socket bound in a worker, shared through the primary,
// served by the addon (src/dgram.rs), since Deno's dgram does not adopt a
// UDP fd ("Unsupported fd type"). The program keeps the socket it made: its
// methods are replaced on the instance with ones that behave as Node's
// dgram.Socket (send's forms and callbacks, 'message' with (msg, rinfo),
// address(), close() and 'close', connect()/disconnect()/remoteAddress(),
// ref/unref, socket options, multicast membership); its events are its own, so 'listening', 'message', 'close'
// and 'error' reach the program's listeners.

const dns = require('dns');
const net = require('net');
const os = require('os');
const runtime = require('./runtime');

const errnoNames = new Map(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

function codedError(code, message, Type = Error) {
  const e = new Type(message);
  e.code = code;
  return e;
}

const notRunning = () => codedError('ERR_SOCKET_DGRAM_NOT_RUNNING', 'Not running');

/** A failed system call as Node reports one (`errno` negated, as libuv returns it). */
function systemError(errno, syscall, address, port) {
  const code = errnoNames.get(-errno) || 'EIO';
  const where = address === undefined ? '' : ` ${address}${port === undefined ? '' : `:${port}`}`;
  const e = codedError(code, `${syscall} ${code}${where}`);
  e.errno = errno;
  e.syscall = syscall;
  if (address !== undefined) e.address = address;
  if (port !== undefined) e.port = port;
  return e;
}

function invalidArgType(name, expected, value) {
  return codedError(
    'ERR_INVALID_ARG_TYPE',
    `The "${name}" argument must be of type ${expected}. Received ${value === null ? 'null' : typeof value}`,
    TypeError,
  );
}

/** A datagram's bytes, as Node's send takes them. */
function toBuffer(data, name = 'buffer') {
  if (typeof data === 'string') return Buffer.from(data);
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw invalidArgType(name, 'Buffer, TypedArray, DataView or string', data);
}

/** send(msg, offset, length, ...): the slice, bounds checked as Node checks them. */
function slice(data, offset, length) {
  const buffer = toBuffer(data);
  offset >>>= 0;
  length >>>= 0;
  if (offset > buffer.length) throw codedError('ERR_BUFFER_OUT_OF_BOUNDS', '"offset" is outside of buffer bounds', RangeError);
  if (offset + length > buffer.length) {
    throw codedError('ERR_BUFFER_OUT_OF_BOUNDS', '"length" is outside of buffer bounds', RangeError);
  }
  return buffer.subarray(offset, offset + length);
}

function validatePort(port) {
  const number = typeof port === 'string' && port.trim() !== '' ? Number(port) : port;
  if (typeof number !== 'number' || !Number.isInteger(number) || number < 1 || number > 65535) {
    throw codedError('ERR_SOCKET_BAD_PORT', `Port should be > 0 and < 65536. Received ${String(port)}.`, RangeError);
  }
  return number;
}

/** The instance methods a shared socket gets, by name (see SharedDgram). */
const METHODS = [
  'send',
  'close',
  'address',
  'remoteAddress',
  'connect',
  'disconnect',
  'ref',
  'unref',
  'setBroadcast',
  'setTTL',
  'setMulticastTTL',
  'setMulticastLoopback',
  'setMulticastInterface',
  'addMembership',
  'dropMembership',
  'setRecvBufferSize',
  'setSendBufferSize',
  'getRecvBufferSize',
  'getSendBufferSize',
  'getSendQueueSize',
  'getSendQueueCount',
];

/** On a socket a SharedDgram serves: that SharedDgram (lib/handles.js sends its fd). */
const kServed = Symbol('rcluster.servedDgram');

/**
 * `socket`, a Deno dgram.Socket whose bind is on its way to the primary,
 * served by a NativeDgram once `serve(fd)` has the shared socket. Until
 * then sends and a close wait, as in Node while a socket is binding;
 * `release()` (the primary refused the bind) gives the socket back to the
 * runtime's own methods.
 */
class SharedDgram {
  constructor(socket) {
    this.socket = socket;
    this.type = socket.type === 'udp6' ? 'udp6' : 'udp4';
    this.native = null;
    this.state = 'binding'; // then 'bound', 'closed'
    this.connectState = 'disconnected'; // 'connecting', 'connected'
    this.queue = []; // what waits for the bind: [isClose, fn]
    this.refed = true;
    this.keepAlive = new runtime.KeepAlive();
    for (const name of METHODS) {
      const method = this[name];
      socket[name] = (...args) => method.apply(this, args);
    }
    Object.defineProperty(socket, kServed, { value: this, configurable: true });
  }

  /** What lib/handles.js sends for this socket: a duplicate of its fd (null once closed). */
  ipcHandle() {
    return this.state === 'bound' ? { fdForIpc: () => this.native.dupFd() } : null;
  }

  /** Serves `fd`, the shared socket (now this object's to close), and emits 'listening'. */
  serve(fd) {
    const native = require('./native');
    let served;
    try {
      served = new native.NativeDgram(fd);
    } catch (e) {
      native.closeFd(fd); // refused: still ours
      this.release();
      this.socket.emit('error', e);
      return;
    }
    try {
      served.start((event) => this.onEvent(event));
    } catch (e) {
      served.close();
      this.release();
      this.socket.emit('error', e);
      return;
    }
    this.native = served;
    this.state = 'bound';
    if (this.refed) this.keepAlive.ref();
    this.socket.emit('listening');
    const queue = this.queue;
    this.queue = [];
    for (const [, fn] of queue) {
      try {
        fn();
      } catch (e) {
        this.socket.emit('error', e); // a second close, say: thrown where no caller waits
      }
    }
  }

  /** The bind failed: the socket is the runtime's again (a queued close closes it there). */
  release() {
    for (const name of METHODS) delete this.socket[name];
    delete this.socket[kServed];
    const closes = this.queue.filter(([isClose]) => isClose);
    this.queue = [];
    this.state = 'released';
    for (const [, fn] of closes) fn();
  }

  onEvent(event) {
    if (this.state !== 'bound') return;
    if (event.error) {
      this.socket.emit('error', new Error(`rcluster: ${event.error}`));
      return;
    }
    const rinfo = { address: event.address, family: event.family, port: event.port, size: event.data.length };
    this.socket.emit('message', event.data, rinfo);
  }

  /** Throws as Node's dgram does on a closed socket. */
  running() {
    if (this.state === 'closed') throw notRunning();
  }

  send(buffer, offset, length, port, address, callback) {
    const connected = this.connectState === 'connected';
    if (!connected) {
      if (address || (port && typeof port !== 'function')) {
        buffer = slice(buffer, offset, length);
      } else {
        callback = port;
        port = offset;
        address = length;
      }
    } else {
      if (typeof length === 'number') {
        buffer = slice(buffer, offset, length);
        if (typeof port === 'function') {
          callback = port;
          port = null;
        }
      } else {
        callback = offset;
      }
      if (port || address) throw codedError('ERR_SOCKET_DGRAM_IS_CONNECTED', 'Already connected');
    }
    const list = Array.isArray(buffer) ? buffer.map((b) => toBuffer(b, 'buffer list arguments')) : [toBuffer(buffer)];
    if (!connected) port = validatePort(port);
    if (typeof callback !== 'function') callback = undefined;
    if (typeof address === 'function') {
      callback = address;
      address = undefined;
    } else if (address !== undefined && address !== null && typeof address !== 'string') {
      throw invalidArgType('address', 'string', address);
    }
    this.running();
    const data = list.length === 1 ? list[0] : Buffer.concat(list);
    const send = () => (connected ? this.sendNow(data, null, address, port, callback) : this.lookupAndSend(data, port, address, callback));
    if (this.state === 'binding') {
      this.queue.push([false, send]);
      return;
    }
    send();
  }

  /** `address` (default: the loopback address of the socket's family) as an IP address, as Node's lookup gives it. */
  lookup(address, callback) {
    const host = address || (this.type === 'udp4' ? '127.0.0.1' : '::1');
    const family = this.type === 'udp4' ? 4 : 6;
    if (net.isIP(host) === family) callback(null, host);
    else dns.lookup(host, { family }, callback);
  }

  lookupAndSend(data, port, address, callback) {
    this.lookup(address, (error, ip) => {
      if (!error) {
        this.sendNow(data, ip, address || ip, port, callback);
      } else if (callback) {
        callback(error);
      } else {
        this.socket.emit('error', error);
      }
    });
  }

  /** Sends to `ip` and `port`, or where the socket is connected (`ip` null). */
  sendNow(data, ip, address, port, callback) {
    if (this.state !== 'bound') return; // closed meanwhile, as Node drops it
    let sent;
    try {
      sent = ip === null ? this.native.sendConnected(data) : this.native.send(data, ip, port);
    } catch (e) {
      sent = e;
    }
    if (!callback) return; // as in Node, a send without a callback reports no error
    if (typeof sent === 'number' && sent >= 0) process.nextTick(callback, null, sent);
    else process.nextTick(callback, typeof sent === 'number' ? systemError(sent, 'send', address, port ?? undefined) : sent);
  }

  close(callback) {
    if (typeof callback === 'function') this.socket.on('close', callback);
    if (this.state === 'binding') {
      this.queue.push([true, () => this.socket.close()]);
      return this.socket;
    }
    this.running();
    this.state = 'closed';
    this.native.close();
    this.native = null;
    if (this.refed) this.keepAlive.unref();
    process.nextTick(() => this.socket.emit('close'));
    return this.socket;
  }

  /** The bound address; as Node's, an error before the bind has completed. */
  bound() {
    this.running();
    if (this.state !== 'bound') throw systemError(-os.constants.errno.EBADF, 'getsockname');
    return this.native;
  }

  address() {
    return this.bound().address();
  }

  remoteAddress() {
    this.running();
    if (this.connectState !== 'connected') throw codedError('ERR_SOCKET_DGRAM_NOT_CONNECTED', 'Not connected');
    return this.native.remoteAddress();
  }

  /** As Node's: connects every process's copy of the shared socket, as there. */
  connect(port, address, callback) {
    port = validatePort(port);
    if (typeof address === 'function') {
      callback = address;
      address = '';
    } else if (address === undefined) {
      address = '';
    }
    if (typeof address !== 'string') throw invalidArgType('address', 'string', address);
    if (this.connectState !== 'disconnected') throw codedError('ERR_SOCKET_DGRAM_IS_CONNECTED', 'Already connected');
    this.connectState = 'connecting';
    const connect = () => {
      if (typeof callback === 'function') this.socket.once('connect', callback);
      this.lookup(address, (lookupError, ip) => {
        if (this.state !== 'bound') return;
        let error = lookupError;
        if (!error) {
          const err = this.native.connect(ip, port);
          if (err !== 0) error = systemError(err, 'connect', address, port);
        }
        if (error) {
          this.connectState = 'disconnected';
          process.nextTick(() => {
            if (typeof callback === 'function') {
              this.socket.removeListener('connect', callback);
              callback(error);
            } else {
              this.socket.emit('error', error);
            }
          });
          return;
        }
        this.connectState = 'connected';
        process.nextTick(() => this.socket.emit('connect'));
      });
    };
    if (this.state === 'binding') this.queue.push([false, connect]);
    else connect();
  }

  disconnect() {
    if (this.connectState !== 'connected') throw codedError('ERR_SOCKET_DGRAM_NOT_CONNECTED', 'Not connected');
    this.running();
    const err = this.native.disconnect();
    if (err !== 0) throw systemError(err, 'connect');
    this.connectState = 'disconnected';
  }

  ref() {
    if (!this.refed) {
      this.refed = true;
      if (this.state === 'bound') this.keepAlive.ref();
    }
    return this.socket;
  }

  unref() {
    if (this.refed) {
      this.refed = false;
      if (this.state === 'bound') this.keepAlive.unref();
    }
    return this.socket;
  }

  /** Sets a socket option (a name of src/dgram.rs's OPTIONS); a failure throws as Node's. */
  setOption(name, value, syscall) {
    const err = this.bound().setOption(name, value);
    if (err !== 0) throw systemError(err, syscall);
  }

  setBroadcast(flag) {
    this.setOption('broadcast', flag ? 1 : 0, 'setBroadcast');
  }

  setTTL(ttl) {
    if (typeof ttl !== 'number') throw invalidArgType('ttl', 'number', ttl);
    this.setOption('ttl', ttl, 'setTTL');
    return ttl;
  }

  setMulticastTTL(ttl) {
    if (typeof ttl !== 'number') throw invalidArgType('ttl', 'number', ttl);
    this.setOption('multicastTTL', ttl, 'setMulticastTTL');
    return ttl;
  }

  setMulticastLoopback(flag) {
    this.setOption('multicastLoopback', flag ? 1 : 0, 'setMulticastLoopback');
    return flag;
  }

  setMulticastInterface(interfaceAddress) {
    this.running();
    if (typeof interfaceAddress !== 'string') throw invalidArgType('interfaceAddress', 'string', interfaceAddress);
    const err = this.bound().setMulticastInterface(interfaceAddress);
    if (err !== 0) throw systemError(err, 'setMulticastInterface');
  }

  membership(join, group, iface, syscall) {
    this.running();
    if (typeof group !== 'string') throw invalidArgType('multicastAddress', 'string', group);
    if (iface !== undefined && typeof iface !== 'string') throw invalidArgType('multicastInterface', 'string', iface);
    const err = this.bound().membership(join, group, iface);
    if (err !== 0) throw systemError(err, syscall);
  }

  addMembership(group, iface) {
    this.membership(true, group, iface, 'addMembership');
  }

  dropMembership(group, iface) {
    this.membership(false, group, iface, 'dropMembership');
  }

  bufferSize(name, size, syscall) {
    const native = this.bound();
    if (size !== undefined) {
      if (typeof size !== 'number' || !Number.isInteger(size) || size <= 0) {
        throw codedError('ERR_SOCKET_BAD_BUFFER_SIZE', 'Buffer size must be a positive integer', TypeError);
      }
      const err = native.setOption(name, size);
      if (err !== 0) throw systemError(err, syscall);
      return undefined;
    }
    const value = native.getOption(name);
    if (value < 0) throw systemError(value, syscall);
    return value;
  }

  setRecvBufferSize(size) {
    this.bufferSize('recvBufferSize', size, 'setRecvBufferSize');
  }

  setSendBufferSize(size) {
    this.bufferSize('sendBufferSize', size, 'setSendBufferSize');
  }

  getRecvBufferSize() {
    return this.bufferSize('recvBufferSize', undefined, 'getRecvBufferSize');
  }

  getSendBufferSize() {
    return this.bufferSize('sendBufferSize', undefined, 'getSendBufferSize');
  }

  /** Sends are made at once (sendto, non-blocking): nothing waits in a queue. */
  getSendQueueSize() {
    return 0;
  }

  getSendQueueCount() {
    return 0;
  }
}

module.exports = { SharedDgram, kServed };
