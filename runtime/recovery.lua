-- Bring a dead worker's unacked messages back to their queues, for every queue named, in one call.
--
-- The same work as the maintenance in dramatiq's dispatch.lua, which runs for one queue and only
-- when a consumer of that queue draws it by chance; this runs on a timer (runtime/recovery.py).
--
-- KEYS[1]  the broker's namespace ("dramatiq")
-- ARGV     now (ms, the caller's clock, like dramatiq's heartbeats), heartbeat timeout (ms),
--          the caller's broker id, dead-letter TTL (ms), then the queue names (delay queues too)
-- Returns  a flat list: queue, messages put back, queue, messages put back, ...

local namespace = KEYS[1]
local now = tonumber(ARGV[1])
local heartbeat_timeout = tonumber(ARGV[2])
local me = ARGV[3]
local dead_message_ttl = tonumber(ARGV[4])
local heartbeats = namespace .. ":__heartbeats__"

-- The caller is alive even when every one of its consumers is waiting on full prefetch.
redis.call("zadd", heartbeats, now, me)

local recovered = {}
local dead_workers = redis.call("zrangebyscore", heartbeats, 0, now - heartbeat_timeout)
for _, worker in ipairs(dead_workers) do
    local acks_prefix = namespace .. ":__acks__." .. worker
    for i = 5, #ARGV do
        local queue = ARGV[i]
        local acks = acks_prefix .. "." .. queue
        local message_ids = redis.call("smembers", acks)
        if #message_ids > 0 then
            local queue_key = namespace .. ":" .. queue
            local messages = queue_key .. ".msgs"
            local count = 0
            for _, message_id in ipairs(message_ids) do
                if redis.call("hexists", messages, message_id) == 1 then
                    redis.call("rpush", queue_key, message_id)
                    count = count + 1
                end
            end
            redis.call("del", acks)
            if count > 0 then
                table.insert(recovered, queue)
                table.insert(recovered, count)
            end
        end
    end
    -- Forget the worker only once no queue holds its messages (one of them may be declared
    -- by other workers only): dramatiq's rule.
    if #redis.call("keys", acks_prefix .. ".*") == 0 then
        redis.call("zrem", heartbeats, worker)
    end
end

-- Dead letters older than their TTL go, as dramatiq's maintenance does (a quiet queue included).
for i = 5, #ARGV do
    local queue = ARGV[i]
    if string.sub(queue, -3) ~= ".DQ" then
        local xqueue = namespace .. ":" .. queue .. ".XQ"
        local expired = redis.call("zrangebyscore", xqueue, 0, now - dead_message_ttl, "LIMIT", 0, 500)
        if #expired > 0 then
            redis.call("zrem", xqueue, unpack(expired))
            redis.call("hdel", xqueue .. ".msgs", unpack(expired))
        end
    end
end

return recovered
