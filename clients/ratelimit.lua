-- Fleet-wide rate limiter: a sliding-window log in a sorted set, plus a fleet-wide penalty.
--
-- Every worker process on every host runs this same script against the same keys, and Redis
-- runs scripts one at a time, so the check-and-add below is atomic across the whole fleet.
-- Time comes from Redis TIME, never from the callers' clocks, so host clock skew cannot let
-- two hosts both believe a slot is free.
--
-- KEYS[1]  the window: a sorted set of granted slots, scored by grant time (microseconds)
-- KEYS[2]  the penalty: while it exists, nobody is granted a slot
--
-- ARGV[1] = "acquire"   ARGV[2] = limit, ARGV[3] = window (microseconds), ARGV[4] = unique member
--   returns {1, 0, now}     granted (now = Redis time of the grant, microseconds)
--   returns {0, wait, now}  refused; wait = microseconds until a slot may be free
-- ARGV[1] = "peek"      ARGV[2] = window (microseconds)
--   returns {used, now}     slots granted in the window now (nothing is taken)
-- ARGV[1] = "penalize"  ARGV[2] = penalty (milliseconds)
--   returns {pttl, now}     the penalty's remaining time (milliseconds) after this call

-- Redis 7 always replicates script effects; older servers need this before a write that follows TIME.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local command = ARGV[1]

if command == "penalize" then
  local penalty_ms = tonumber(ARGV[2])
  -- Never shorten a penalty another worker set: two 429s in a row keep the longer block.
  if redis.call("PTTL", KEYS[2]) < penalty_ms then
    redis.call("SET", KEYS[2], "1", "PX", penalty_ms)
  end
  return {redis.call("PTTL", KEYS[2]), now}
end

if command == "peek" then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[2]))
  return {redis.call("ZCARD", KEYS[1]), now}
end

if command == "acquire" then
  -- The penalty is checked first: during a 429 block the window does not matter.
  local penalty_ms = redis.call("PTTL", KEYS[2])
  if penalty_ms > 0 then
    return {0, penalty_ms * 1000, now}
  end

  local limit = tonumber(ARGV[2])
  local window = tonumber(ARGV[3])
  -- A slot granted at t counts while now - t < window.
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
  if redis.call("ZCARD", KEYS[1]) < limit then
    redis.call("ZADD", KEYS[1], now, ARGV[4])
    -- Idle limiters vanish: the key outlives its newest entry by a second at most.
    redis.call("PEXPIRE", KEYS[1], math.ceil(window / 1000) + 1000)
    return {1, 0, now}
  end

  local oldest = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
  local wait = tonumber(oldest[2]) + window - now
  if wait < 1 then
    wait = 1
  end
  return {0, wait, now}
end

return redis.error_reply("ratelimit.lua: unknown command " .. tostring(command))
