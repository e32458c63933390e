#!/usr/bin/env node
'use strict'
// Part of the kite-for-Python interop harness (tests/interop/kitejs), run against the pinned
// npm kite.js@1.0.13 (see package.json / package-lock.json; install with `npm ci` here).
// Logging TCP proxy for HTTP / SockJS / WebSocket traffic (127.0.0.1 only).
//
//   node proxy.js LISTEN_PORT TARGET_PORT [--target-host 127.0.0.1] [--keep-extensions] [--max N]
//
// Every chunk is logged to stdout as one line:
//   <conn> C>S http "<raw bytes, JSON-escaped>"        before/without a WebSocket upgrade
//   <conn> S>C http "..."
//   <conn> C>S ws text <payload>                         decoded (unmasked) WebSocket frames
//   <conn> S>C ws close 1000 "reason" | ws ping | ws pong | ws binary <hex>
// By default the proxy removes the Sec-WebSocket-Extensions request header, so no
// permessage-deflate is negotiated and every frame payload is readable (--keep-extensions to
// forward it untouched; compressed frames are then logged as "ws text(rsv1/compressed) <n> bytes").
// LISTEN_PORT 0 picks a free port; the first stdout line is  PROXY {"port":P,"target":...}.

const net = require('net')

const argv = process.argv.slice(2)
let listenPort = null
let targetPort = null
let targetHost = '127.0.0.1'
let keepExt = false
let max = 4000
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  if (a === '--target-host') targetHost = argv[++i]
  else if (a === '--keep-extensions') keepExt = true
  else if (a === '--max') max = parseInt(argv[++i], 10)
  else if (listenPort === null) listenPort = parseInt(a, 10)
  else if (targetPort === null) targetPort = parseInt(a, 10)
}
if (listenPort === null || targetPort === null) {
  process.stderr.write('usage: node proxy.js LISTEN_PORT TARGET_PORT [--target-host H] [--keep-extensions] [--max N]\n')
  process.exit(2)
}

const clip = s => (s.length > max ? s.slice(0, max) + `...(${s.length} chars)` : s)
let nextConn = 1

function wsParser(tag) {
  let buf = Buffer.alloc(0)
  let fragments = []
  let fragOpcode = 0
  return chunk => {
    buf = Buffer.concat([buf, chunk])
    for (;;) {
      if (buf.length < 2) return
      const b0 = buf[0]
      const b1 = buf[1]
      const fin = (b0 & 0x80) !== 0
      const rsv1 = (b0 & 0x40) !== 0
      const opcode = b0 & 0x0f
      const masked = (b1 & 0x80) !== 0
      let len = b1 & 0x7f
      let off = 2
      if (len === 126) {
        if (buf.length < 4) return
        len = buf.readUInt16BE(2)
        off = 4
      } else if (len === 127) {
        if (buf.length < 10) return
        len = Number(buf.readBigUInt64BE(2))
        off = 10
      }
      let mask = null
      if (masked) {
        if (buf.length < off + 4) return
        mask = buf.slice(off, off + 4)
        off += 4
      }
      if (buf.length < off + len) return
      const payload = Buffer.from(buf.slice(off, off + len))
      buf = buf.slice(off + len)
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3]
      const m = masked ? ' (masked)' : ''
      if (opcode === 0x8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : ''
        const reason = payload.length > 2 ? payload.slice(2).toString('utf8') : ''
        console.log(`${tag} ws close ${code} ${JSON.stringify(reason)}${m}`)
      } else if (opcode === 0x9) console.log(`${tag} ws ping ${payload.toString('hex')}${m}`)
      else if (opcode === 0xa) console.log(`${tag} ws pong ${payload.toString('hex')}${m}`)
      else {
        if (opcode !== 0) {
          fragOpcode = opcode
          fragments = []
        }
        fragments.push(payload)
        if (!fin) continue
        const whole = Buffer.concat(fragments)
        fragments = []
        const kind = fragOpcode === 1 ? 'text' : fragOpcode === 2 ? 'binary' : `op${fragOpcode}`
        if (rsv1) console.log(`${tag} ws ${kind}(rsv1/compressed) ${whole.length} bytes${m}`)
        else if (fragOpcode === 1) console.log(`${tag} ws text ${clip(whole.toString('utf8'))}${m}`)
        else console.log(`${tag} ws ${kind} ${clip(whole.toString('hex'))}${m}`)
      }
    }
  }
}

const server = net.createServer(client => {
  const id = `#${nextConn++}`
  const upstream = net.connect(targetPort, targetHost)
  let upgraded = false
  let c2sWs = null
  let s2cWs = null
  let reqHead = ''

  client.on('data', chunk => {
    if (upgraded) {
      c2sWs(chunk)
      upstream.write(chunk)
      return
    }
    let data = chunk
    const startsHead = /^(GET|POST|PUT|DELETE|OPTIONS|HEAD|PATCH) /.test(chunk.toString('latin1', 0, 8))
    if (reqHead.length || startsHead) {
      // buffer a request head until complete, then strip Sec-WebSocket-Extensions from it
      reqHead += chunk.toString('latin1')
      const end = reqHead.indexOf('\r\n\r\n')
      if (end < 0) return // wait for the whole head
      let head = reqHead.slice(0, end + 4)
      const rest = Buffer.from(reqHead.slice(end + 4), 'latin1')
      if (!keepExt && /\r\nupgrade:\s*websocket/i.test(head)) {
        head = head.replace(/\r\nSec-WebSocket-Extensions:[^\r]*/gi, '')
      }
      data = Buffer.concat([Buffer.from(head, 'latin1'), rest])
      reqHead = ''
    }
    console.log(`${id} C>S http ${JSON.stringify(clip(data.toString('utf8')))}`)
    upstream.write(data)
  })

  upstream.on('data', chunk => {
    if (upgraded) {
      s2cWs(chunk)
      client.write(chunk)
      return
    }
    const s = chunk.toString('latin1')
    if (/^HTTP\/1\.1 101 /.test(s)) {
      const end = s.indexOf('\r\n\r\n')
      console.log(`${id} S>C http ${JSON.stringify(clip(s.slice(0, end + 4)))}`)
      upgraded = true
      c2sWs = wsParser(`${id} C>S`)
      s2cWs = wsParser(`${id} S>C`)
      const rest = chunk.slice(end + 4)
      if (rest.length) s2cWs(rest)
    } else {
      console.log(`${id} S>C http ${JSON.stringify(clip(chunk.toString('utf8')))}`)
    }
    client.write(chunk)
  })

  const closeBoth = who => () => {
    console.log(`${id} ${who} closed`)
    client.destroy()
    upstream.destroy()
  }
  client.on('close', closeBoth('client'))
  upstream.on('close', closeBoth('server'))
  client.on('error', () => {})
  upstream.on('error', e => console.log(`${id} upstream error ${e.message}`))
})

server.listen(listenPort, '127.0.0.1', () => {
  console.log(`PROXY ${JSON.stringify({ port: server.address().port, target: `${targetHost}:${targetPort}` })}`)
})
