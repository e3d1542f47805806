-- Fleet-wide cost bucket: one shop's GraphQL query-cost budget (Shopify's leaky bucket), seen by every worker.
--
-- Shopify gives each app and shop a bucket of points (maximumAvailable) that refills at restoreRate
-- points a second; a query needs its requested cost in the bucket, and is charged its actual cost.
-- Every worker debits the requested cost here before a call and corrects after it, so the fleet as
-- a whole stays inside the one budget.  Redis runs scripts one at a time and the time is Redis TIME.
--
-- KEYS[1]  a hash: available (points), at (microseconds of the last refill), max, rate (points/s)
--
-- ARGV[1] = "debit"   ARGV[2] = cost, ARGV[3] = default max, ARGV[4] = default rate
--   returns {1, 0, available}      granted (the points left, as a string)
--   returns {0, wait_us, available} refused: microseconds until the cost is in the bucket
-- ARGV[1] = "credit"  ARGV[2] = points given back (a call cost less than requested, or was not run)
-- ARGV[1] = "observe" ARGV[2] = currentlyAvailable, ARGV[3] = maximumAvailable, ARGV[4] = restoreRate
--   Shopify's own figures: the bucket never holds more than Shopify says is there.
--   both return {1, 0, available}

if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local command = ARGV[1]

local state = redis.call("HMGET", KEYS[1], "available", "at", "max", "rate")
local max = tonumber(state[3])
local rate = tonumber(state[4])
if command == "debit" then
  max = max or tonumber(ARGV[3])
  rate = rate or tonumber(ARGV[4])
elseif command == "observe" then
  max = tonumber(ARGV[3])
  rate = tonumber(ARGV[4])
end
if not max or not rate then
  -- Nothing known yet (a credit before any debit): nothing to correct.
  return {1, 0, "0"}
end
local available = tonumber(state[1]) or max
local at = tonumber(state[2]) or now
available = math.min(max, available + (now - at) * rate / 1000000)

local granted, wait = 1, 0
if command == "debit" then
  -- A query dearer than the whole bucket waits for a full bucket (Shopify refuses it anyway).
  local cost = math.min(tonumber(ARGV[2]), max)
  if available >= cost then
    available = available - cost
  else
    granted = 0
    wait = math.max(1, math.ceil((cost - available) * 1000000 / rate))
  end
elseif command == "credit" then
  available = math.min(max, available + tonumber(ARGV[2]))
elseif command == "observe" then
  available = math.min(available, tonumber(ARGV[2]))
else
  return redis.error_reply("costbucket.lua: unknown command " .. tostring(command))
end

redis.call("HSET", KEYS[1], "available", tostring(available), "at", now, "max", tostring(max), "rate", tostring(rate))
-- An idle bucket is full again after max / rate seconds: then the key may go.
redis.call("PEXPIRE", KEYS[1], math.ceil(max * 1000 / rate) + 1000)
return {granted, wait, tostring(available)}
