'use strict';
// Bun only: a net.Socket-like Duplex over a connected fd, through
// Bun.connect({ fd }). Bun's `new net.Socket({ fd })` leaves the socket
// inert, and its http.Server serves any Duplex emitted as 'connection'.

const { Duplex } = require('stream');

class BunFdSocket extends Duplex {
  constructor(fd, options = {}) {
    super({ allowHalfOpen: Boolean(options.allowHalfOpen) });
    this._bun = null;
    this._writeQueue = [];
    this._timeoutMs = 0;
    this._timer = null;
    this.connecting = false;
    this.bytesRead = 0;
    const self = this;
    // eslint-disable-next-line no-undef
    Bun.connect({
      fd,
      socket: {
        open(socket) {
          self._bun = socket;
          self._flush();
        },
        data(socket, chunk) {
          self.bytesRead += chunk.length;
          self._touch();
          if (!self.push(Buffer.from(chunk)) && socket.pause) socket.pause();
        },
        drain() {
          self._flush();
        },
        end() {
          self.push(null);
        },
        close() {
          self.push(null);
          if (!self.destroyed) self.destroy();
        },
        error(_socket, error) {
          self.destroy(error);
        },
      },
    }).catch((error) => this.destroy(error));
  }

  get remoteAddress() {
    return this._bun ? this._bun.remoteAddress : undefined;
  }
  get remotePort() {
    return this._bun ? this._bun.remotePort : undefined;
  }
  get remoteFamily() {
    const a = this.remoteAddress;
    return a === undefined ? undefined : a.includes(':') ? 'IPv6' : 'IPv4';
  }
  get localAddress() {
    return this._bun ? this._bun.localAddress : undefined;
  }
  get localPort() {
    return this._bun ? this._bun.localPort : undefined;
  }
  address() {
    return { address: this.localAddress, port: this.localPort, family: this.remoteFamily };
  }
  setNoDelay(noDelay = true) {
    if (this._bun && this._bun.setNoDelay) this._bun.setNoDelay(noDelay);
    return this;
  }
  setKeepAlive(enable = false, initialDelay = 0) {
    if (this._bun && this._bun.setKeepAlive) this._bun.setKeepAlive(enable, initialDelay);
    return this;
  }
  setTimeout(ms, callback) {
    this._timeoutMs = ms;
    if (callback) this.once('timeout', callback);
    this._touch();
    return this;
  }
  _touch() {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (this._timeoutMs > 0) {
      this._timer = setTimeout(() => this.emit('timeout'), this._timeoutMs);
      if (this._timer.unref) this._timer.unref();
    }
  }
  ref() {
    return this;
  }
  unref() {
    return this;
  }

  _read() {
    if (this._bun && this._bun.resume) this._bun.resume();
  }
  _write(chunk, _encoding, callback) {
    this._writeQueue.push([chunk, callback]);
    this._flush();
  }
  _flush() {
    const socket = this._bun;
    if (!socket) return;
    while (this._writeQueue.length > 0) {
      const entry = this._writeQueue[0];
      const written = socket.write(entry[0]);
      if (written < 0) {
        this._writeQueue.shift()[1](new Error('socket closed'));
        continue;
      }
      this._touch();
      if (written < entry[0].length) {
        entry[0] = entry[0].subarray(written);
        return; // the rest goes out on 'drain'
      }
      this._writeQueue.shift()[1]();
    }
  }
  _final(callback) {
    if (this._bun) this._bun.end();
    callback();
  }
  _destroy(error, callback) {
    if (this._timer) clearTimeout(this._timer);
    if (this._bun) {
      if (this._bun.terminate) this._bun.terminate();
      else this._bun.end();
    }
    callback(error);
  }
}

module.exports = { BunFdSocket };
