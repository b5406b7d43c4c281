'use strict';
// Messages cross the channel as JSON text, like Node's default 'json'
// serialization; argument checks and errors follow child_process.send.

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

/** Splits send()'s arguments: (message[, sendHandle[, options]][, callback]). */
function sendArgs(args) {
  const [message] = args;
  let callback = args.slice(1).find((a) => typeof a === 'function');
  const handle = typeof args[1] === 'function' ? undefined : args[1];
  if (message === undefined) throw missingArgs();
  if (handle !== undefined && handle !== null) {
    throw new Error(
      'rcluster: sending handles with send() is not supported; connections reach workers through server.listen()',
    );
  }
  return { text: JSON.stringify(message), callback };
}

function decode(text) {
  return JSON.parse(text);
}

module.exports = { sendArgs, decode, channelClosed };
