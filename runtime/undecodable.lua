-- Move one fetched message whose payload cannot be decoded to its queue's dead letters, as a nack does.
--
-- The consumer has the payload but not its Redis id: find it among the ids this worker fetched.
-- KEYS  this worker's acks set of the queue, the queue's messages hash, the dead-letter set, its hash
-- ARGV  the raw payload, now (ms)
-- Returns the Redis id moved, or false when no fetched message has that payload (acked meanwhile).
local acks, messages, xqueue, xmessages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local payload, now = ARGV[1], ARGV[2]
for _, message_id in ipairs(redis.call("smembers", acks)) do
    if redis.call("hget", messages, message_id) == payload then
        redis.call("srem", acks, message_id)
        redis.call("zadd", xqueue, now, message_id)
        redis.call("hset", xmessages, message_id, payload)
        redis.call("hdel", messages, message_id)
        return message_id
    end
end
return false
