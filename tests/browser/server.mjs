// The fixture's static server: the pages, the project's node_modules (so the page imports
// `tandem-client` exactly as npm installed it), and `/directory/*` forwarded to the Worker.
//
// Why a forwarding server instead of CORS in the Worker: the client's directory calls are plain
// `fetch`es; pages served from this origin reach `/directory/*` on their own origin, so the
// Worker needs no CORS headers for the test. A real deployment serves the web app from the
// Worker's origin (DESIGN §2.6), where the default directory URL (the mediator's origin) works
// without CORS too. The WebSocket goes straight to the Worker (WebSockets are not subject to
// CORS).
import http from 'node:http';
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
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      resolve({ base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
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
