#!/usr/bin/env node
'use strict'
// Adapted from the reference kite.js harness; drives kite.js' own Kontrol client.
// kite.js Kontrol client driver (uses kite.js' own Kontrol class, lib/kontrol/*.js).
//
//   node kontrol.js KONTROL_URL fetch    QUERYJSON [--who JSON] [--call METHOD JSONARGS] [opts]
//   node kontrol.js KONTROL_URL register KITE_URL  [opts]
//   node kontrol.js KONTROL_URL raw      METHOD JSONARGS [opts]     (Kontrol's own kite.tell)
//
// fetch:    Kontrol#fetchKites({query, who}) -> tell('getKites', [{query, who}]); prints
//           {"kites":[{"kite":{..},"url":..,"token":..}]}; with --call, connects to the first
//           kite (auth {type:"token", key:<token from kontrol>}) and calls METHOD; prints
//           {"kites":[...],"call":{"result":..}|{"error":{..}}}
// register: Kontrol#register({url: KITE_URL}) -> tell('register', [{url}])  (Go kontrol's
//           RegisterArgs); kontrol may then call kite.heartbeat(interval, ping) back on this
//           connection, which kite.js answers (lib/kite/wrap.js); the process stays alive
//           for --stay MS (default 0) to keep the registration.
// opts: --auth-type kiteKey --auth-key KEY  (Go kontrol requires kiteKey auth)
//       --kite JSON (username/environment/name/version/region/hostname of this client kite)
//       --transport ws|sockjs (default from URL scheme), --timeout MS (default 10000),
//       --log-level N, --stay MS
// Output: one JSON line; exit 0 ok, 1 kite/kontrol error, 2 local error/timeout.

const { Kontrol, Kite } = require('kite.js')

const argv = process.argv.slice(2)
const pos = []
const o = { authType: null, authKey: null, kite: {}, transport: null, timeout: 10000, logLevel: -1, who: undefined, call: null, stay: 0 }
function die(code, obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
  process.exit(code)
}
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const next = () => argv[++i]
  if (a === '--auth-type') o.authType = next()
  else if (a === '--auth-key') o.authKey = next()
  else if (a === '--kite') o.kite = JSON.parse(next())
  else if (a === '--transport') o.transport = next()
  else if (a === '--timeout') o.timeout = Number(next())
  else if (a === '--log-level') o.logLevel = parseInt(next(), 10)
  else if (a === '--who') o.who = JSON.parse(next())
  else if (a === '--call') o.call = { method: next(), args: JSON.parse(next()) }
  else if (a === '--stay') o.stay = Number(next())
  else pos.push(a)
}
if (pos.length < 3) die(2, { type: 'usageError', message: 'node kontrol.js KONTROL_URL fetch|register|raw ...' })
const [url, cmd, ...rest] = pos
const scheme = new URL(url).protocol
const transport = o.transport || (scheme === 'http:' || scheme === 'https:' ? 'sockjs' : 'ws')
const transportClass = transport === 'sockjs' ? Kite.transport.SockJS : Kite.transport.WebSocket

if (o.timeout > 0) setTimeout(() => die(2, { type: 'timeout', message: `no answer within ${o.timeout} ms` }), o.timeout).unref()

const kontrol = new Kontrol(
  Object.assign({}, o.kite, {
    url,
    auth: o.authType || o.authKey ? { type: o.authType || 'kiteKey', key: o.authKey || '' } : undefined,
    logLevel: o.logLevel,
    transportClass,
    autoReconnect: false,
  })
)
// Kontrol#authenticate() forwards the kite's 'error' events; without a listener they throw
kontrol.on('error', (msg, ev) => die(2, { type: 'connectionError', message: `${msg} ${(ev && ev.message) || ''}`.trim() }))
kontrol.kite.options.autoReconnect = false

const errJSON = e => ({ type: e && e.type !== undefined ? e.type : null, message: e && e.message !== undefined ? e.message : String(e), code: e && e.code !== undefined ? e.code : null })

async function main() {
  if (cmd === 'fetch') {
    const query = JSON.parse(rest[0])
    const params = { query }
    if (o.who !== undefined) params.who = o.who
    let kites
    try {
      kites = await kontrol.fetchKites(params)
    } catch (e) {
      return die(1, { error: errJSON(e) })
    }
    // kites are BaseKite instances (this.constructor.Kite === BaseKite), not connected
    const descr = kites.map(k => ({ kite: k.getKiteInfo(), url: k.options.url, token: k.options.auth && k.options.auth.key }))
    if (!o.call) return die(0, { kites: descr })
    if (!kites.length) return die(1, { kites: descr, error: { type: 'notFound', message: 'no kites' } })
    const k = kites[0]
    k.on('error', () => {})
    k.options.logLevel = o.logLevel
    k.connect()
    // BaseKite#tell(method, params, callback): callback API
    k.tell(o.call.method, o.call.args, (err, result) => {
      if (err) die(1, { kites: descr, call: { error: errJSON(err) } })
      else die(0, { kites: descr, call: { result: result === undefined ? null : result } })
    })
  } else if (cmd === 'register') {
    try {
      const r = await kontrol.register({ url: rest[0] })
      process.stdout.write(JSON.stringify({ registered: r === undefined ? null : r }) + '\n')
      if (o.stay > 0) setTimeout(() => process.exit(0), o.stay)
      else process.exit(0)
    } catch (e) {
      die(1, { error: errJSON(e) })
    }
  } else if (cmd === 'raw') {
    kontrol.kite.tell(rest[0], JSON.parse(rest[1] || '[]'), (err, result) => {
      if (err) die(1, { error: errJSON(err) })
      else die(0, { result: result === undefined ? null : result })
    })
  } else {
    die(2, { type: 'usageError', message: `unknown command ${cmd}` })
  }
}
main()
