-- Fleet-wide rate limiter: a sliding-window log in a sorted set, plus a fleet-wide penalty.
--
-- Every worker process on every host runs this same script against the same keys, and Redis
-- runs scripts one at a time, so the check-and-add below is atomic across the whole fleet.
-- Time comes from Redis TIME, never from the callers' clocks, so host clock skew cannot let
-- two hosts both believe a slot is free.
--
-- KEYS[1]  the window: a sorted set of granted slots, scored by grant time (microseconds)
-- KEYS[2]  the penalty: while it exists, nobody is granted a slot
-- KEYS[3]  the urgent claims: slots an urgent acquirer waits for, scored by when the claim lapses
--
-- ARGV[1] = "acquire"   ARGV[2] = limit, ARGV[3] = window (microseconds), ARGV[4] = unique member,
--                       ARGV[5] = slots wanted together (default 1), ARGV[6] = "1" if urgent
--   returns {1, 0, now}     granted: ARGV[4]..":"..i for i = 1..count are in the window
--                           (now = Redis time of the grant, microseconds)
--   returns {0, wait, now}  refused; wait = microseconds until a slot may be free
--   An urgent acquirer that is refused claims its slots (until a window from now): while a claim
--   lives, others are granted only what is left beside it, so it gets the next free slots.
-- ARGV[1] = "peek"      ARGV[2] = window (microseconds)
--   returns {used, now}     slots granted in the window now (nothing is taken)
-- ARGV[1] = "restamp"   ARGV[2] = window (microseconds), ARGV[3..] = granted members
--   returns {moved, now}    the members still in the window now count from now (a slot reserved
--                           ahead of its request is stamped when the request leaves)
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

if command == "restamp" then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[2]))
  local moved = 0
  for i = 3, #ARGV do
    if redis.call("ZSCORE", KEYS[1], ARGV[i]) then
      redis.call("ZADD", KEYS[1], "XX", now, ARGV[i])
      moved = moved + 1
    end
  end
  return {moved, now}
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
  local member = ARGV[4]
  local count = tonumber(ARGV[5] or "1")
  local urgent = ARGV[6] == "1"
  -- A slot granted at t counts while now - t < window.
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
  redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", now)
  local used = redis.call("ZCARD", KEYS[1])
  -- Slots claimed by urgent waiters other than this acquirer.
  local claimed = redis.call("ZCARD", KEYS[3])
  for i = 1, count do
    if redis.call("ZSCORE", KEYS[3], member .. ":" .. i) then
      claimed = claimed - 1
    end
  end
  local free = limit - used
  if not urgent then
    free = free - claimed
  end
  if count <= free then
    for i = 1, count do
      redis.call("ZADD", KEYS[1], now, member .. ":" .. i)
      redis.call("ZREM", KEYS[3], member .. ":" .. i)
    end
    -- Idle limiters vanish: the key outlives its newest entry by a second at most.
    redis.call("PEXPIRE", KEYS[1], math.ceil(window / 1000) + 1000)
    return {1, 0, now}
  end

  local wait = 1
  if used > 0 then
    -- The slot that frees the ones this acquirer misses leaves the window then.
    local missing = math.min(math.max(count - free, 1), used)
    local oldest = redis.call("ZRANGE", KEYS[1], missing - 1, missing - 1, "WITHSCORES")
    wait = math.max(tonumber(oldest[2]) + window - now, 1)
  end
  if urgent then
    for i = 1, count do
      redis.call("ZADD", KEYS[3], now + wait + window, member .. ":" .. i)
    end
    redis.call("PEXPIRE", KEYS[3], math.ceil((wait + window) / 1000) + 1000)
  end
  return {0, wait, now}
end

return redis.error_reply("ratelimit.lua: unknown command " .. tostring(command))
