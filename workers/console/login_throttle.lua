-- Reserve one login attempt, before its password is checked: both counters move in one step.
-- (ARGV[6] "succeeded": a good password forgets the pair's count and gives its address count back.)
--
-- Each counter is a hash {n = attempts counted, last = when the last one was counted (ms, Redis'
-- clock)}.  The first `free` attempts of a counter go at once; each later one must come at least
-- min(base * 2^(n - free), cap) after the last.  An attempt
-- refused here is not counted: it checks no password, so waiting is enough to get the next try.
-- Every counted attempt sets the counter's expiry with its count (in the same step): a counter
-- never lives without one, and is forgotten `window` after its last attempt.
--
-- KEYS[1]  <ns>:console:login:pair:<account>:<address>   attempts on one account from one address
-- KEYS[2]  <ns>:console:login:address:<address>          attempts on any account from that address
-- ARGV[1]  free attempts per pair       ARGV[2]  free attempts per address
-- ARGV[3]  base delay (ms)              ARGV[4]  largest delay (ms)       ARGV[5]  window (ms)
--
-- Returns {1, 0} (go: counted) or {0, wait_ms, which} (which: 1 the pair, 2 the address).

if ARGV[6] == 'succeeded' then
  redis.call('DEL', KEYS[1])
  -- Only an existing count goes down: a counter never exists without its expiry.
  if tonumber(redis.call('HGET', KEYS[2], 'n') or '0') > 0 then
    redis.call('HINCRBY', KEYS[2], 'n', -1)
  end
  return {1, 0}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local free = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local base, cap, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local longest, which = 0, 0
for i = 1, 2 do
  local n = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  if n >= free[i] then
    local last = tonumber(redis.call('HGET', KEYS[i], 'last') or '0')
    local delay = math.min(base * 2 ^ math.min(n - free[i], 62), cap)
    local wait = last + delay - now
    if wait > longest then
      longest, which = wait, i
    end
  end
end
if longest > 0 then
  return {0, math.ceil(longest), which}
end
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'n', 1)
  redis.call('HSET', KEYS[i], 'last', now)
  redis.call('PEXPIRE', KEYS[i], window)
end
return {1, 0}
