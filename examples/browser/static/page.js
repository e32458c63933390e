/* The page's script: a kite.js kite talking to the Python kite that served it (section 1),
 * and kite.js's Kontrol client finding a kite through Kontrol (section 2).
 * kite.js's browser build (/kite.js) defines the globals Kite and Kontrol. */
/* global Kite, Kontrol */
'use strict'

const $ = id => document.getElementById(id)
const errorText = err => (err && err.message) || String(err)
const TIMEOUT_MS = 10000 // kite.js calls have no timeout of their own

function show(id, text, ok = true) {
  const el = $(id)
  el.textContent = text
  el.classList.toggle('ok', ok)
  el.classList.toggle('error', !ok)
}

// -- 1. the page as a kite ------------------------------------------------------------------

// Methods the Python kite may call on this page: fn(...args, callback).
let linesLogged = 0
const api = {
  log(line, callback) {
    const item = document.createElement('li')
    item.textContent = line
    $('log').appendChild(item)
    linesLogged += 1
    callback(null, `line ${linesLogged} logged`)
  },
  alert(message, callback) {
    const box = $('alert')
    box.textContent = message
    box.hidden = false
    callback(null, 'alert shown')
  },
}

const kite = new Kite({
  url: `${location.origin}/kite`,
  transportClass: Kite.transport.SockJS,
  name: 'browser-page',
  version: '1.0.0',
  api,
  logLevel: Kite.DebugLevel.NOTICE,
})
kite.on('error', () => show('status', 'connection error', false))
kite.on('close', () => show('status', 'disconnected, reconnecting…', false))

// kite.js calls take one params value, sent as withArgs: always pass an array.
const call = (method, args) => kite.tell(method, args).timeout(TIMEOUT_MS)

function callSquare() {
  const number = Number($('number').value)
  call('square', [number]).then(
    result => show('square-result', String(result)),
    err => show('square-result', errorText(err), false)
  )
}

function callGreet() {
  call('greet', [$('name').value]).then(
    answers => show('greet-result', `log() returned “${answers.log}”, alert() returned “${answers.alert}”`),
    err => show('greet-result', errorText(err), false)
  )
}

$('square-form').addEventListener('submit', event => { event.preventDefault(); callSquare() })
$('greet-form').addEventListener('submit', event => { event.preventDefault(); callGreet() })

let firstOpen = true
kite.on('open', () => {
  show('status', 'connected')
  if (firstOpen) {
    firstOpen = false
    callSquare()
    callGreet()
  }
})

// -- 2. a kite found through Kontrol ----------------------------------------------------------

// A Kontrol query's fields, from general to specific.
const QUERY_FIELDS = ['username', 'environment', 'name', 'version', 'region', 'hostname', 'id']

function findThroughKontrol({ url, auth, query, method }) {
  $('kontrol-url').textContent = url
  $('kontrol-query').textContent = JSON.stringify(query, QUERY_FIELDS)
  const kontrol = new Kontrol({
    url,
    auth,
    name: 'browser-page',
    transportClass: Kite.transport.SockJS,
    logLevel: Kite.DebugLevel.NOTICE,
  })
  kontrol.on('error', () => show('kontrol-found', `cannot reach Kontrol at ${url}`, false))
  kontrol.fetchKites({ query }).timeout(TIMEOUT_MS).then(kites => {
    if (kites.length === 0) throw new Error('no kite matches the query')
    // These kites carry the token Kontrol issued for them and are not connected yet.
    const found = kites[0]
    show('kontrol-found', `${kites.length} kite(s); calling ${found.options.name} at ${found.options.url}`)
    found.on('error', () => show('kontrol-result', `cannot reach ${found.options.url}`, false))
    found.connect()
    // These kites have the callback API, without a timeout of its own.
    const timer = setTimeout(() => show('kontrol-result', `no answer within ${TIMEOUT_MS} ms`, false), TIMEOUT_MS)
    found.tell(method, [], (err, result) => {
      clearTimeout(timer)
      kontrol.disconnect()
      if (err) return show('kontrol-result', errorText(err), false)
      show('kontrol-result', `${method}() answered: ${result.username}, authenticated by ${result.auth}`)
    })
  }).catch(err => show('kontrol-found', errorText(err), false))
}

fetch('/config.json')
  .then(response => response.json())
  .then(config => {
    if (config.kontrol) return findThroughKontrol(config.kontrol)
    show('kontrol-found', 'off: the server runs without a Kontrol', false)
  })
  .catch(err => show('kontrol-found', errorText(err), false))
