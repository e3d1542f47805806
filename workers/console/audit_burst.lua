-- Whether an unauthenticated event (a login with a bad form token, a throttled login, a malformed
-- post) is audited: the first of its kind from one address per window is, the others are counted.
--
-- KEYS[1]  <ns>:console:audit-burst:<kind>:<address>             the window's marker (SET NX EX)
-- KEYS[2]  <ns>:console:audit-burst:<kind>:<address>:suppressed  events not audited since the last row
-- ARGV[1]  window (seconds)
--
-- Returns the number of events suppressed before this one (audit it), or -1 (count it, no row).

if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local suppressed = tonumber(redis.call('GET', KEYS[2]) or '0')
  redis.call('DEL', KEYS[2])
  return suppressed
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]) * 10)
return -1
