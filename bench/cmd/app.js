'use strict';
// The bench's Node app for the `rcluster` command group, unmodified in both
// contenders: under `rcluster run -i N --listen ... -- node app.js` it takes
// its socket by the systemd protocol (fd 3); under `pm2 start app.js -i N` it
// listens on $PORT and pm2's cluster mode (Node's cluster, SCHED_RR) shares
// it. Answers `worker <id> pid <pid>`.
const http = require('http');

const id = process.env.RCLUSTER_WORKER_ID || process.env.NODE_APP_INSTANCE || '0';
const body = `worker ${id} pid ${process.pid}\n`;
const length = Buffer.byteLength(body);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': length });
  res.end(body);
});
const inherited = process.env.LISTEN_FDS && Number(process.env.LISTEN_PID) === process.pid;
server.listen(inherited ? { fd: 3 } : { port: Number(process.env.PORT), host: '127.0.0.1' });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
