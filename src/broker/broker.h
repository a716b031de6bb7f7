/* broker.h -- luamp beyond one machine: the layer between the runtime and
 * the broker Pool's Lua.  wire.c seals values into messages that may
 * cross to another machine (the codec's wire mode under an HMAC-SHA-256)
 * and opens them; redis.c is a Redis client, hiredis driven by luamp's
 * own libuv loop, with a deadline on every request.
 *
 * Everything here is mechanism: which keys, which streams and which
 * scripts is the policy of lua/luamp/broker/.
 */
#ifndef LUAMP_BROKER_H
#define LUAMP_BROKER_H

#include "codec/codec.h"
#include "runtime/runtime.h"

/* luamp.core's seal, open, hmac, random_bytes and wire_build (wire.c),
 * and redis_connect with its Connection class (redis.c). */
extern const lmp_family lmp_wire_family;
extern const lmp_family lmp_redis_family;

#endif
