-- Move dead letters of one queue: back onto the queue ("retry") or away for good ("purge").
--
-- Redis runs a script as one step, so for each message the check, the removal from the dead
-- letters, the enqueue and the audit entry all happen or none does: a message is never lost
-- (removed but not enqueued) nor doubled (enqueued twice by two operators retrying at once).
-- The enqueue is dramatiq's own (brokers/redis/dispatch.lua "enqueue"): the payload under a
-- fresh Redis message id in the queue's hash, then the id at the tail of the queue's list.
--
-- KEYS[1]  <ns>:<queue>.XQ        dead letters: sorted set of Redis message ids, by death time (ms)
-- KEYS[2]  <ns>:<queue>.XQ.msgs   dead letters: hash of Redis message id -> encoded message
-- KEYS[3]  <ns>:<queue>           the queue: list of Redis message ids
-- KEYS[4]  <ns>:<queue>.msgs      the queue: hash of Redis message id -> encoded message
-- KEYS[5]  the audit stream
--
-- ARGV[1]  "retry" or "purge"
-- ARGV[2]  the audit stream's approximate maximum length
-- then five arguments per message:
--   dead letter's Redis id, SHA-1 of its payload as the caller read it, new Redis id (retry),
--   new payload (retry), audit entry (JSON)
--
-- A dead letter that is gone, or whose payload is not the one the caller read (another operator
-- moved it, or dramatiq expired it), is left alone.
-- Returns the Redis ids of the dead letters moved.

-- Redis 7 always replicates script effects; older servers need this before XADD's generated id.
if redis.replicate_commands then
  redis.replicate_commands()
end

local command = ARGV[1]
if command ~= "retry" and command ~= "purge" then
  return redis.error_reply("unknown command " .. tostring(command))
end
local audit_max = ARGV[2]
local moved = {}

for i = 3, #ARGV, 5 do
  local dead_id = ARGV[i]
  local payload = redis.call("HGET", KEYS[2], dead_id)
  if payload and redis.sha1hex(payload) == ARGV[i + 1] then
    redis.call("ZREM", KEYS[1], dead_id)
    redis.call("HDEL", KEYS[2], dead_id)
    if command == "retry" then
      redis.call("HSET", KEYS[4], ARGV[i + 2], ARGV[i + 3])
      redis.call("RPUSH", KEYS[3], ARGV[i + 2])
    end
    redis.call("XADD", KEYS[5], "MAXLEN", "~", audit_max, "*", "entry", ARGV[i + 4])
    moved[#moved + 1] = dead_id
  end
end
return moved
