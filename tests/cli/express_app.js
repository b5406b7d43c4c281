// An unmodified Express app that takes its listening socket from its
// environment, as under systemd socket activation:
//   rcluster run -i 2 --listen 127.0.0.1:8080 -- node express_app.js
// `listen({ fd: 3 })` when LISTEN_FDS is set (rcluster, systemd), else a port.
// Answers `worker <id> pid <pid> express`. SIGTERM: stop accepting, finish
// what is in hand, exit.
const express = require('express');

const app = express();
app.get('/', (req, res) => {
  res.set('Connection', 'close');
  res.send(`worker ${process.env.RCLUSTER_WORKER_ID || '?'} pid ${process.pid} express\n`);
});

const fromSystemd = process.env.LISTEN_FDS && Number(process.env.LISTEN_PID) === process.pid;
const server = app.listen(fromSystemd ? { fd: 3 } : { port: Number(process.env.PORT || 3000) }, () => {
  console.log(`express worker ${process.env.RCLUSTER_WORKER_ID} listening (${fromSystemd ? 'fd 3' : 'port'})`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
