'use strict';
// Messages between rcluster's own primary and worker JS, on the channel that
// carries the app's messages (as Node's cluster uses its internal messages).
// They start with a NUL, which JSON.stringify never writes first, so they
// cannot be mistaken for the app's. A worker sends them only when its
// primary is rcluster's Node primary (fork() sets PRIMARY_ENV): a C, Python
// or `rcluster run` primary would hand them to its app as messages.

const PREFIX = '\u0000rcluster:';
/** Set in a worker's environment by the Node primary (and removed by the worker). */
const PRIMARY_ENV = 'RCLUSTER_NODE_PRIMARY';

/** The worker leaves on purpose (cluster.worker.disconnect()): exitedAfterDisconnect. */
const LEAVING = `${PREFIX}leaving`;
/** The primary's answer: the worker may close its channel now. */
const LEAVING_ACK = `${PREFIX}leaving-ack`;

/** A worker's pipe server or dgram socket listens (the primary's 'listening' event). */
const LISTENING = `${PREFIX}listening:`;

function listening(info) {
  return LISTENING + JSON.stringify(info);
}

/** The address info of a LISTENING message, or null for another message. */
function parseListening(text) {
  return text.startsWith(LISTENING) ? JSON.parse(text.slice(LISTENING.length)) : null;
}

function isInternal(text) {
  return text.charCodeAt(0) === 0 && text.startsWith(PREFIX);
}

module.exports = { PRIMARY_ENV, LEAVING, LEAVING_ACK, isInternal, listening, parseListening };
