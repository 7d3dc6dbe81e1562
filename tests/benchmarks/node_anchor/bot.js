// A minimal bot on Rocket.Chat's official Node SDK (@rocket.chat/sdk), the anchor of the
// command round-trip benchmark (tests/benchmarks/bench_command_anchor.py).
//
// It does what the SDK's README bot does: log in (REST login, then DDP resume), subscribe
// to `__my_messages__`, and answer "/instagram help" in any room by DM (REST im.create,
// cached by the SDK, then chat.sendMessage). The answer text comes from the environment so
// that both bots send the same bytes.
//
// Environment: ROCKETCHAT_URL (http://host:port), ROCKETCHAT_USER, ROCKETCHAT_PASSWORD,
// ANCHOR_REPLY (the DM text). Prints "ready <userId>" on stdout once it listens.
'use strict'

const { Bot } = require('@rocket.chat/sdk')

const quiet = { debug () {}, info () {}, warn () {}, warning () {}, error: console.error }

async function main () {
  const bot = new Bot({ host: process.env.ROCKETCHAT_URL, useSsl: false, logger: quiet })
  await bot.connect()
  await bot.login({
    username: process.env.ROCKETCHAT_USER,
    password: process.env.ROCKETCHAT_PASSWORD
  })
  const reply = process.env.ANCHOR_REPLY || 'help'
  // reactToMessages rather than respondToMessages: the latter also calls rooms.info with a
  // `rid` parameter for every message, which a 6.x/7.x server rejects (it wants roomId).
  await bot.reactToMessages((err, message) => {
    if (err || !message || !message.u || message.u._id === bot.userId) return
    if ((message.msg || '').trim().toLowerCase() !== '/instagram help') return
    bot.sendDirectToUser(reply, message.u.username).catch((e) => {
      console.error('send failed', e && (e.status || e.message))
    })
  })
  process.stdout.write(`ready ${bot.userId}\n`)
  const stop = () => { bot.disconnect().finally(() => process.exit(0)) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((e) => {
  console.error('anchor bot failed:', e && (e.message || JSON.stringify(e)))
  process.exit(1)
})
