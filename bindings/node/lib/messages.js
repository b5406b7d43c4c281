'use strict';
// Messages cross the channel as JSON text, like Node's default 'json'
// serialization; argument checks and errors follow child_process.send.

const handles = require('./handles');

function missingArgs() {
  const e = new TypeError('The "message" argument must be specified');
  e.code = 'ERR_MISSING_ARGS';
  return e;
}

function channelClosed() {
  const e = new Error('Channel closed');
  e.code = 'ERR_IPC_CHANNEL_CLOSED';
  return e;
}

/**
 * Splits send()'s arguments: (message[, sendHandle[, options]][, callback]).
 * `deliver(send)` calls `send(text, fds)`: a handle (net.Server,
 * net.Socket, dgram.Socket) travels as fds attached (lib/handles.js).
 */
function sendArgs(args) {
  const [message] = args;
  const callback = args.slice(1).find((a) => typeof a === 'function');
  const [handle, options] = args.slice(1).filter((a) => typeof a !== 'function');
  if (message === undefined) throw missingArgs();
  return { deliver: handles.prepare(message, handle, options), callback };
}

function decode(text) {
  return JSON.parse(text);
}

module.exports = { sendArgs, decode, channelClosed };
