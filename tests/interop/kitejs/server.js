#!/usr/bin/env node
'use strict'
// Part of the kite-for-Python interop harness (tests/interop/kitejs), run against the pinned
// npm kite.js@1.0.13 (see package.json / package-lock.json; install with `npm ci` here).
// kite.js (npm kite.js@1.0.13) test server: kite "math" 1.0.0 (username kitejs, environment
// test, region local, hostname localhost), auth disabled.
//
//   node server.js PORT [--transport sockjs|ws] [--prefix /kite] [--host 127.0.0.1]
//                       [--log-level N] [--trace] [--no-patch] [--auth] [--kite-key FILE]
//
// Methods (withArgs in brackets):
//   square [x]        -> x*x                     echo [a]  -> a   (echo [a,b,..] -> [a,b,..])
//   add [a,b,..]      -> a+b+..                  fail []   -> error Error("boom")  (wire {"message":"boom"})
//   failTyped []      -> error {type:"genericError",message:"boom",code:""}
//   throws []         -> handler throws Error("thrown boom") (kite.js answers it as a *result*
//                        {"error":{"message":"thrown boom"}})
//   callback [fn]     -> calls fn("hello"), then returns "done"
//   whoami []         -> {kite, authentication, token} as seen by the server
//   reverse [m, args] -> calls method m(args) on the calling client over the same connection
//   sleep [ms]        -> "slept" after ms
//   plus kite.js built-ins: kite.ping -> "pong", kite.echo, kite.heartbeat, kite.systemInfo,
//   kite.log, kite.print, kite.prompt, kite.getPass, kite.tunnel (lib/kite/wrap.js)
//
// --transport     sockjs (default; http://HOST:PORT/kite, raw ws at ws://HOST:PORT/kite/websocket)
//                 or ws (plain WebSocket server, any path: ws://HOST:PORT/)
// --auth          passes auth: true to KiteServer -- has NO effect in kite.js 1.0.13:
//                 KiteApi#shouldAuthenticate reads .mustAuth from the wrapper function, not from
//                 the user function it was set on, so unauthenticated calls are always accepted.
// --kite-key FILE set server.key to this kiteKey JWT; kite.js then verifies {type:"token"}
//                 authentication with the kiteKey's kontrolKey claim (RS256 public key).
//                 Without it ANY request carrying 'authentication' fails (kite.js validates
//                 whatever it receives, even with auth: false). See tokens.js.
// --no-patch      run kite.js unpatched (see the two patches below) to reproduce its bugs
//
// PORT 0 picks a free port (the real one is printed in the READY line).
// Prints exactly one line on stdout when listening:
//   READY {"name":"math","version":"1.0.0","transport":"sockjs","host":"127.0.0.1","port":P,
//          "prefix":"/kite","url":"http://127.0.0.1:P/kite","ws_url":"ws://127.0.0.1:P/kite/websocket"}
// --trace logs every kite message (server side, after/before SockJS de/framing) to stderr as
//   TRACE <remote-addr:port> recv|send <payload>

const { KiteServer } = require('kite.js')

function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`)
  process.stderr.write(
    'usage: node server.js PORT [--transport sockjs|ws] [--prefix /kite] [--host 127.0.0.1] [--log-level N] [--trace] [--no-patch] [--auth] [--kite-key FILE]\n'
  )
  process.exit(2)
}

const argv = process.argv.slice(2)
const opts = { transport: 'sockjs', prefix: null, host: '127.0.0.1', logLevel: -1, trace: false, patch: true, auth: false, kiteKey: null }
let port = null
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const next = () => {
    if (i + 1 >= argv.length) usage(`${a} needs a value`)
    return argv[++i]
  }
  if (a === '--transport') opts.transport = next()
  else if (a === '--prefix') opts.prefix = next()
  else if (a === '--host') opts.host = next()
  else if (a === '--log-level') opts.logLevel = parseInt(next(), 10)
  else if (a === '--trace') opts.trace = true
  else if (a === '--no-patch') opts.patch = false
  else if (a === '--auth') opts.auth = true
  else if (a === '--kite-key') opts.kiteKey = require('fs').readFileSync(next(), 'utf8').trim()
  else if (a === '-h' || a === '--help') usage()
  else if (port === null && /^\d+$/.test(a)) port = parseInt(a, 10)
  else usage(`unknown argument ${a}`)
}
if (port === null) usage('PORT is required')
if (!['sockjs', 'ws'].includes(opts.transport)) usage('--transport must be sockjs or ws')
if (opts.prefix === null) opts.prefix = opts.transport === 'sockjs' ? '/kite' : ''

// --- bind to opts.host instead of kite.js' hard-coded 0.0.0.0 -------------------------
// KiteServer.listen() constructs `new Server({port, prefix, name, logLevel})` without a
// hostname, and both transport servers default to 0.0.0.0. Subclass to inject the host.
const Base = opts.transport === 'sockjs' ? KiteServer.transport.SockJS : KiteServer.transport.WebSocket
class BoundServer extends Base {
  constructor(o) {
    // the SockJS transport throws 'port is required!' for port 0 (`!port`); the string '0'
    // passes that check and http.Server#listen('0') still means "any free port".
    super(Object.assign({}, o, { hostname: opts.host, port: o.port === 0 ? '0' : o.port }))
  }
  nodeServer() {
    // sockjs transport: this.server is an http.Server; ws transport: this.server is a ws.Server
    return opts.transport === 'sockjs' ? this.server : this.server._server
  }
}

// --- API --------------------------------------------------------------------------------
// kite.js calls every handler as  fn(...withArgs, responseCallback, {kite, authentication})
// (lib/kiteapi.js setMethod). Handlers below are variadic so a wrong arity cannot shift the
// callback position.
function split(all) {
  const ctx = all.pop()
  const cb = all.pop()
  return { args: all, cb, ctx }
}

const api = {
  square(...all) {
    const { args, cb } = split(all)
    const x = args[0]
    if (typeof x !== 'number') return cb({ type: 'argumentError', message: 'square expects a number' })
    cb(null, x * x)
  },
  echo(...all) {
    const { args, cb } = split(all)
    // one argument -> that argument; otherwise the whole argument list
    cb(null, args.length === 1 ? args[0] : args)
  },
  add(...all) {
    const { args, cb } = split(all)
    if (!args.every(n => typeof n === 'number')) {
      return cb({ type: 'argumentError', message: 'add expects numbers' })
    }
    cb(null, args.reduce((s, n) => s + n, 0))
  },
  fail(...all) {
    const { cb } = split(all)
    // idiomatic kite.js: pass an Error. dnode-protocol's traverse copies Error objects as
    // {message} (+ enumerable own props), so the wire error is {"message":"boom"}.
    cb(new Error('boom'))
  },
  failTyped(...all) {
    const { cb } = split(all)
    // Go-kite shaped error object (kite.Error JSON: type/message/code)
    cb({ type: 'genericError', message: 'boom', code: '' })
  },
  throws(...all) {
    // synchronous throw inside a handler (exercises kite.js' error path)
    throw new Error('thrown boom')
  },
  callback(...all) {
    const { args, cb } = split(all)
    const fn = args[0]
    if (typeof fn !== 'function') return cb({ type: 'argumentError', message: 'callback expects a function' })
    fn('hello')
    cb(null, 'done')
  },
  whoami(...all) {
    // returns the caller's kite info + authentication as seen by the server, and the verified
    // token ({headers, claims}) when token auth succeeded (server.getToken() === currentToken)
    const { cb, ctx } = split(all)
    const token = server.getToken()
    cb(null, {
      kite: ctx.kite,
      authentication: ctx.authentication === undefined ? null : ctx.authentication,
      token: token === undefined ? null : token,
    })
  },
  reverse(...all) {
    // reverse RPC: call METHOD with ARGS on the *calling client's* kite over the same
    // connection (ws.kite, a kite.js Kite), return its result. args: [method, argsArray]
    const { args, cb, ctx } = split(all)
    const [m, margs] = args
    const session = ctx.kite && sessionsByKiteId.get(ctx.kite.id)
    if (!session) return cb({ type: 'genericError', message: 'calling connection not found' })
    session.kite
      .tell(m, margs === undefined ? [] : margs)
      .timeout(5000)
      .then(r => cb(null, r === undefined ? null : r))
      .catch(e => cb({ type: e.type || 'genericError', message: String(e.message) }))
  },
  sleep(...all) {
    const { args, cb } = split(all)
    setTimeout(() => cb(null, 'slept'), Number(args[0]) || 0)
  },
}

// kite id (from the "kite" field of incoming requests) -> Session, for the reverse method
const sessionsByKiteId = new Map()

const server = new KiteServer({
  name: 'math',
  username: 'kitejs',
  environment: 'test',
  version: '1.0.0',
  region: 'local',
  hostname: 'localhost',
  auth: opts.auth, // intended: false = no auth, undefined = mustAuth (lib/kiteapi.js); not enforced, see --auth
  logLevel: opts.logLevel,
  prefix: opts.prefix,
  serverClass: BoundServer,
  api,
})

if (opts.kiteKey) server.key = opts.kiteKey // read by lib/kite/handleIncomingMessage.js (this.key)

if (opts.patch) {
  // KiteServer has no getKiteInfo(), but lib/kite/handleIncomingMessage.js calls
  // this.getKiteInfo() on the error path (auth failure / handler throws) -> TypeError inside a
  // bluebird promise -> the client never gets a response. Provide it so errors are answered.
  server.getKiteInfo = function () {
    const o = this.options
    return {
      id: this.id,
      username: o.username,
      environment: o.environment,
      name: o.name,
      version: o.version,
      region: o.region,
      hostname: o.hostname,
    }
  }
}

{
  const origOnConnection = server.onConnection
  server.onConnection = function (session) {
    const id = session.getId()
    const log = (dir, data) => process.stderr.write(`TRACE ${id} ${dir} ${data}\n`)
    if (opts.patch) {
      // lib/server/websocket/session.js attaches no 'error' listener to the ws connection, so a
      // client that resets its TCP connection (ECONNRESET) crashes the whole server process
      // with an unhandled 'error' event. Swallow (and optionally log) it.
      session.connection.on('error', err => {
        if (opts.trace) log('error', err.message)
      })
    }
    session.on('message', raw => {
      try {
        const m = JSON.parse(raw)
        const k = m && m.arguments && m.arguments[0] && m.arguments[0].kite
        if (k && k.id && !sessionsByKiteId.has(k.id)) {
          sessionsByKiteId.set(k.id, session)
          session.on('close', () => sessionsByKiteId.delete(k.id))
        }
      } catch (e) {}
    })
    if (opts.trace) {
      session.on('message', raw => log('recv', raw))
      const origSend = session.send.bind(session)
      session.send = msg => {
        log('send', msg)
        return origSend(msg)
      }
      session.on('close', () => log('close', ''))
    }
    return origOnConnection.call(this, session)
  }
  // listen() registers this.bound('onConnection'), which binds the instance property above.
}

server.listen(port)

const nodeServer = server.server.nodeServer()
const announce = () => {
  const addr = nodeServer.address()
  const p = addr && typeof addr === 'object' ? addr.port : port
  const info = {
    name: 'math',
    version: '1.0.0',
    transport: opts.transport,
    host: opts.host,
    port: p,
    prefix: opts.prefix,
  }
  if (opts.transport === 'sockjs') {
    info.url = `http://${opts.host}:${p}${opts.prefix}`
    info.ws_url = `ws://${opts.host}:${p}${opts.prefix}/websocket`
  } else {
    info.url = `ws://${opts.host}:${p}${opts.prefix || '/'}`
  }
  process.stdout.write(`READY ${JSON.stringify(info)}\n`)
}
if (nodeServer.listening) announce()
else nodeServer.once('listening', announce)
nodeServer.on('error', err => {
  process.stderr.write(`listen error: ${err.message}\n`)
  process.exit(1)
})

const stop = () => {
  server.close()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
