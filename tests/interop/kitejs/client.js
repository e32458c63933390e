#!/usr/bin/env node
'use strict'
// Part of the kite-for-Python interop harness (tests/interop/kitejs), run against the pinned
// npm kite.js@1.0.13 (see package.json / package-lock.json; install with `npm ci` here).
// kite.js (npm kite.js@1.0.13) command-line client.
//
//   node client.js URL METHOD [JSONARGS] [options]
//
// URL      ws://host:port/path        -> raw WebSocket transport (package "ws"), no SockJS framing
//          http://host:port/kite      -> SockJS transport (package "sockjs-client")
//          (override with --transport ws|sockjs)
// METHOD   e.g. square, kite.ping
// JSONARGS JSON sent as the kite "withArgs" value; normally an array, e.g. '[4]' (default '[]').
//          A non-array (e.g. '4') is sent as-is, exactly like kite.js' own kite.tell('square', 4).
//          Any string equal to the --fn marker ("__fn__" by default), at any depth, is replaced
//          by a JS function (sent as a dnode callback); each call of it is logged to stderr as
//          CALLBACK <json-array-of-args>  and collected for --envelope.
//
// Output (stdout, exactly one line):
//   success: the result as JSON (undefined -> null)                             exit 0
//   kite error response: {"type":..,"message":..,"code":..}                     exit 1
//   local failure (timeout, connection error, bad usage): {"type":"timeout"|"connectionError"|
//     "usageError"|"clientError","message":..}                                  exit 2
//   --envelope: {"ok":true,"result":..,"callbacks":[[..],..]} or {"ok":false,"error":{..},"callbacks":[..]}
//
// Options:
//   --timeout MS            overall deadline for connect + call(s) (default 10000; 0 = none)
//   --transport ws|sockjs   force a transport (default: from URL scheme)
//   --sockjs-transports L   comma list passed to SockJS {transports: [...]}, e.g. websocket,
//                           xhr-streaming, xhr-polling, eventsource
//   --auth-type T --auth-key K   send authentication {type:T,key:K} (e.g. token, kiteKey)
//   --kite JSON             client kite info fields: {"username","environment","name","version",
//                           "region","hostname"} (kite.js defaults to anonymous/browser-*)
//   --fn MARKER             callback marker string (default "__fn__")
//   --wait-callbacks N      after the response, wait until N callback invocations were seen
//   --envelope              print the envelope form above
//   --trace                 log frames to stderr: "TRACE send|recv <kite message>" and, for
//                           SockJS, "TRACE sockjs-recv <raw frame>" (o, h, a[...], c[...])
//   --log-level N           kite.js logger level (-1 silent (default), 0..5 = CRITICAL..DEBUG)
//   --bench N               run N calls (after connecting) and print a stats JSON line
//   --conc C                calls in flight during --bench (default 1), per connection
//   --conns K               connections used by --bench (default 1; each gets --conc calls in
//                           flight). Added for the kite-for-Python benchmark (bench/bench_square.py).
//   --warmup W              untimed calls before the --bench measurement (default 0)

const { Kite } = require('kite.js')

const EXIT_OK = 0
const EXIT_REMOTE = 1
const EXIT_LOCAL = 2

let envelope = false
const callbackCalls = []

function out(line) {
  process.stdout.write(line + '\n')
}

function finish(code, payload) {
  if (envelope) {
    const env = code === EXIT_OK ? { ok: true, result: payload } : { ok: false, error: payload }
    env.callbacks = callbackCalls
    out(JSON.stringify(env))
  } else {
    out(JSON.stringify(payload === undefined ? null : payload))
  }
  // stdout writes to files and pipes are synchronous on Linux, so exiting right away is safe
  process.exit(code)
}

function usageError(message) {
  process.stderr.write(
    'usage: node client.js URL METHOD [JSONARGS] [--timeout MS] [--transport ws|sockjs] ' +
      '[--sockjs-transports L] [--auth-type T --auth-key K] [--kite JSON] [--fn MARKER] ' +
      '[--wait-callbacks N] [--envelope] [--trace] [--log-level N] [--bench N --conc C --conns K --warmup W]\n'
  )
  finish(EXIT_LOCAL, { type: 'usageError', message })
}

// ---------------------------------------------------------------- argument parsing
const argv = process.argv.slice(2)
const pos = []
const o = {
  timeout: 10000,
  transport: null,
  sockjsTransports: null,
  authType: null,
  authKey: null,
  kite: {},
  fnMarker: '__fn__',
  waitCallbacks: 0,
  trace: false,
  logLevel: -1,
  bench: 0,
  conc: 1,
  conns: 1,
  warmup: 0,
}
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const next = () => {
    if (i + 1 >= argv.length) usageError(`${a} needs a value`)
    return argv[++i]
  }
  switch (a) {
    case '--timeout': o.timeout = Number(next()); break
    case '--transport': o.transport = next(); break
    case '--sockjs-transports': o.sockjsTransports = next().split(',').filter(Boolean); break
    case '--auth-type': o.authType = next(); break
    case '--auth-key': o.authKey = next(); break
    case '--kite':
      try { o.kite = JSON.parse(next()) } catch (e) { usageError(`--kite: ${e.message}`) }
      break
    case '--fn': o.fnMarker = next(); break
    case '--wait-callbacks': o.waitCallbacks = parseInt(next(), 10); break
    case '--envelope': envelope = true; break
    case '--trace': o.trace = true; break
    case '--log-level': o.logLevel = parseInt(next(), 10); break
    case '--bench': o.bench = parseInt(next(), 10); break
    case '--conc': o.conc = parseInt(next(), 10); break
    case '--conns': o.conns = parseInt(next(), 10); break
    case '--warmup': o.warmup = parseInt(next(), 10); break
    case '-h': case '--help': usageError('help'); break
    default:
      if (a.startsWith('--')) usageError(`unknown option ${a}`)
      pos.push(a)
  }
}
if (pos.length < 2 || pos.length > 3) usageError('need URL METHOD [JSONARGS]')
const [url, method, jsonArgs = '[]'] = pos
let args
try {
  args = JSON.parse(jsonArgs)
} catch (e) {
  usageError(`JSONARGS is not valid JSON: ${e.message}`)
}

let scheme
try {
  scheme = new URL(url).protocol
} catch (e) {
  usageError(`bad URL: ${url}`)
}
const transport = o.transport || (scheme === 'http:' || scheme === 'https:' ? 'sockjs' : 'ws')
if (!['ws', 'sockjs'].includes(transport)) usageError('--transport must be ws or sockjs')

function trace(dir, data) {
  if (o.trace) process.stderr.write(`TRACE ${dir} ${data}\n`)
}

// ---------------------------------------------------------------- callbacks in args
function withFunctions(value) {
  if (value === o.fnMarker) {
    return function kiteCallback(...cbArgs) {
      const plain = JSON.parse(JSON.stringify(cbArgs, (k, v) => (v === undefined ? null : v)))
      callbackCalls.push(plain)
      process.stderr.write(`CALLBACK ${JSON.stringify(plain)}\n`)
      maybeDone()
    }
  }
  if (Array.isArray(value)) return value.map(withFunctions)
  if (value && typeof value === 'object') {
    const r = {}
    for (const k of Object.keys(value)) r[k] = withFunctions(value[k])
    return r
  }
  return value
}

// ---------------------------------------------------------------- kite setup
const kiteOptions = Object.assign({}, o.kite, {
  url,
  autoConnect: false, // connect manually, after instrumenting
  autoReconnect: false,
  logLevel: o.logLevel,
  transportClass: transport === 'sockjs' ? Kite.transport.SockJS : Kite.transport.WebSocket,
  transportOptions: o.sockjsTransports ? { transports: o.sockjsTransports } : {},
})
if (o.authType || o.authKey) kiteOptions.auth = { type: o.authType || 'token', key: o.authKey || '' }

if (o.trace && transport === 'sockjs') {
  // raw SockJS frames as received ('o', 'h', 'a["..."]', 'c[code,"reason"]')
  const SockJS = Kite.transport.SockJS
  const origTM = SockJS.prototype._transportMessage
  SockJS.prototype._transportMessage = function (msg) {
    trace('sockjs-recv', msg)
    return origTM.call(this, msg)
  }
  const origCT = SockJS.prototype._connect
  SockJS.prototype._connect = function () {
    const r = origCT.apply(this, arguments)
    if (this._transport) trace('sockjs-transport', `${this._transport.transportName} ${this._transport.url || ''}`)
    return r
  }
}

let kite
try {
  kite = new Kite(kiteOptions)
} catch (e) {
  finish(EXIT_LOCAL, { type: 'clientError', message: e.message })
}

let settled = false
let response = null // {code, payload}
function settle(code, payload) {
  if (settled) return
  settled = true
  response = { code, payload }
  maybeDone()
}
function maybeDone() {
  if (!settled) return
  if (response.code === EXIT_OK && callbackCalls.length < o.waitCallbacks) return
  if (finishing) return
  finishing = true
  // close the connection cleanly before exiting
  disconnectCleanly(kite, () => finish(response.code, response.payload))
}
let finishing = false

// Close k's connection cleanly (close frame / SockJS close), so the peer sees an orderly close
// instead of a TCP reset, then call done(): once closed, at once when not connected, after
// 500 ms at the most.
function disconnectCleanly(k, done) {
  const ws = k && k.ws
  if (!ws || !(ws.readyState === 0 || ws.readyState === 1)) return done()
  const t = setTimeout(done, 500)
  k.removeAllListeners('close')
  k.on('close', () => {
    clearTimeout(t)
    done()
  })
  try { k.disconnect() } catch (e) { clearTimeout(t); done() }
}

function errorJSON(err) {
  if (err == null) return { type: null, message: null, code: null }
  if (typeof err !== 'object') return { type: null, message: String(err), code: null }
  return {
    type: err.type === undefined ? null : err.type,
    message: err.message === undefined ? null : err.message,
    code: err.code === undefined ? null : err.code,
  }
}

// kite.js emits 'error' (throws if unhandled) on transport errors, 'close' on close
let opened = false
kite.on('error', (msg, ev) => {
  const detail = ev && (ev.message || (ev.error && ev.error.message) || ev.type)
  if (!settled) settle(EXIT_LOCAL, { type: 'connectionError', message: `${msg}${detail ? ' ' + detail : ''}` })
})
kite.on('close', ev => {
  if (!settled) {
    const why = ev && (ev.reason || ev.code) ? ` (${ev.code || ''} ${ev.reason || ''})` : ''
    settle(EXIT_LOCAL, {
      type: 'connectionError',
      message: (opened ? 'connection closed before response' : 'could not connect') + why,
    })
  }
})
kite.on('open', () => {
  opened = true
})

if (o.timeout > 0) {
  setTimeout(() => {
    settle(EXIT_LOCAL, {
      type: 'timeout',
      message: `no ${opened ? 'response' : 'connection'} within ${o.timeout} ms`,
    })
  }, o.timeout).unref()
}

try {
  kite.connect()
} catch (e) {
  settle(EXIT_LOCAL, { type: 'connectionError', message: e.message })
}

if (kite.ws) {
  if (o.trace) {
    const ws = kite.ws
    const origSend = ws.send.bind(ws)
    ws.send = m => {
      trace('send', m)
      return origSend(m)
    }
    ws.addEventListener('message', e => trace('recv', e.data))
  }
}

// ---------------------------------------------------------------- single call / bench
function call(k = kite) {
  // Kite#tell(method, params) -> Promise; params becomes "withArgs" verbatim
  return k.tell(method, withFunctions(args))
}

function percentile(sorted, p) {
  if (!sorted.length) return null
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return +sorted[i].toFixed(3)
}

// --conns K: the extra connections (besides `kite`) used by the bench
const extraKites = []

function closeExtraKites() {
  // disconnect the extra bench connections cleanly (close frames), at most 500 ms
  return Promise.all(extraKites.map(k => new Promise(resolve => disconnectCleanly(k, resolve))))
}

async function runBench() {
  for (let i = 1; i < Math.max(1, o.conns); i++) {
    const k = new Kite(kiteOptions)
    k.on('error', () => {})
    k.connect()
    extraKites.push(k)
  }
  const kites = [kite, ...extraKites]
  await Promise.all(kites.map(k => new Promise(resolve => k.ready(resolve))))
  const runN = async (n, lat) => {
    let next = 0
    let errors = 0
    let firstError = null
    const worker = async k => {
      while (next < n) {
        next++
        const t0 = process.hrtime.bigint()
        try {
          await call(k)
        } catch (e) {
          errors++
          if (!firstError) firstError = errorJSON(e)
        }
        if (lat) lat.push(Number(process.hrtime.bigint() - t0) / 1e6)
      }
    }
    const workers = []
    for (const k of kites) for (let c = 0; c < Math.max(1, o.conc); c++) workers.push(worker(k))
    await Promise.all(workers)
    return { errors, firstError }
  }
  if (o.warmup > 0) await runN(o.warmup, null)
  const lat = []
  const t0 = process.hrtime.bigint()
  const { errors, firstError } = await runN(o.bench, lat)
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  lat.sort((a, b) => a - b)
  await closeExtraKites()
  return {
    bench: true,
    url,
    transport,
    method,
    n: o.bench,
    conc: Math.max(1, o.conc),
    conns: kites.length,
    ok: o.bench - errors,
    errors,
    first_error: firstError,
    seconds: +secs.toFixed(4),
    calls_per_s: +(o.bench / secs).toFixed(1),
    p50_ms: percentile(lat, 50),
    p99_ms: percentile(lat, 99),
    max_ms: percentile(lat, 100),
  }
}

if (!settled) {
  if (o.bench > 0) {
    runBench().then(
      stats => settle(stats.errors ? EXIT_REMOTE : EXIT_OK, stats),
      e => settle(EXIT_LOCAL, { type: 'clientError', message: String(e && e.message) })
    )
  } else {
    call().then(
      result => settle(EXIT_OK, result),
      err => settle(EXIT_REMOTE, errorJSON(err))
    )
  }
}
