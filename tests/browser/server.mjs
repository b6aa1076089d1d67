// The fixture's web origin: the pages, the project's node_modules (so the page imports
// `tandem-client` exactly as npm installed it), and everything else forwarded to the Worker —
// `/directory/*` requests and the mediator WebSockets.
//
// Why one forwarding origin instead of CORS in the Worker: that is the deployment DESIGN §2.6
// describes (the web app, the mediator and `/directory/*` on one origin), so the pages pass only
// `mediatorUrl: ws://<this origin>` and the client's default directory URL (the mediator's
// origin) is what runs; no CORS headers are needed or added. The WebSocket forwarding is a byte
// pipe after the upgrade request, so the Worker sees the device's frames and closes unchanged.
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.ts': 'text/plain; charset=utf-8',
};

/** The module the package's `exports["."]` names, as a URL below `/node_modules/`. */
export function packageEntry(name) {
  const dir = path.join(here, 'node_modules', name);
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const dot = pkg.exports?.['.'];
  const entry = (typeof dot === 'string' ? dot : dot?.import ?? dot?.default) ?? pkg.module ?? pkg.main;
  if (!entry) throw new Error(`${name}: package.json names no entry point`);
  return `/node_modules/${name}/${entry.replace(/^\.\//, '')}`;
}

/** Starts the server on 127.0.0.1 (port 0 = any free one); resolves to its base URL. */
export function startServer({ workerHttp, port = 0 }) {
  const importMap = JSON.stringify({ imports: { 'tandem-client': packageEntry('tandem-client') } });
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://x');
      if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
      if (url.pathname.startsWith('/directory/')) {
        const body = ['GET', 'HEAD'].includes(req.method) ? undefined : await readBody(req);
        const headers = {};
        for (const [k, v] of Object.entries(req.headers)) {
          if (!['host', 'connection', 'content-length'].includes(k)) headers[k] = v;
        }
        const upstream = await fetch(workerHttp + url.pathname + url.search, { method: req.method, headers, body });
        res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'text/plain' });
        res.end(Buffer.from(await upstream.arrayBuffer()));
        return;
      }
      let file;
      if (url.pathname.startsWith('/node_modules/')) {
        file = path.join(here, path.normalize(url.pathname));
      } else {
        file = path.join(here, 'pages', path.normalize(url.pathname === '/' ? '/device.html' : url.pathname));
      }
      if (!file.startsWith(here + path.sep)) throw Object.assign(new Error('outside'), { status: 403 });
      let data = fs.readFileSync(file);
      if (file.endsWith('.html')) data = Buffer.from(data.toString('utf8').replace('__IMPORT_MAP__', importMap));
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
      res.end(data);
    } catch (err) {
      res.writeHead(err.status ?? (err.code === 'ENOENT' ? 404 : 500), { 'content-type': 'text/plain' });
      res.end(String(err.message ?? err));
    }
  });
  // Mediator WebSockets: replay the upgrade request to the Worker, then pipe both ways.
  const worker = new URL(workerHttp);
  const piped = new Set();
  server.on('upgrade', (req, socket, head) => {
    piped.add(socket);
    socket.on('close', () => piped.delete(socket));
    const upstream = net.connect(Number(worker.port), worker.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i];
        lines.push(`${name}: ${name.toLowerCase() === 'host' ? worker.host : req.rawHeaders[i + 1]}`);
      }
      upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) upstream.write(head);
      socket.pipe(upstream);
      upstream.pipe(socket);
    });
    upstream.setNoDelay(true);
    socket.setNoDelay(true);
    // A clean end travels through the pipes (each side's FIN ends the other); an error ends both.
    const end = () => { socket.destroy(); upstream.destroy(); };
    upstream.on('error', end);
    socket.on('error', end);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        /** Cuts every forwarded WebSocket at the TCP level (no close frame): the browser sees 1006. */
        cutWebSockets: () => { const n = piped.size; for (const s of piped) s.destroy(); return n; },
        close: () => { server.closeAllConnections?.(); server.close(); },
      });
    });
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
