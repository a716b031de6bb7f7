/* wire.c -- values sealed for another machine.
 *
 * A sealed message is
 *
 *   "LMPW"  magic
 *   1 byte  wire version (WIRE_VERSION)
 *   8 bytes the build: Lua's release number (4 bytes, little-endian), the
 *           sizes of lua_Integer, lua_Number and size_t, and 1 for a
 *           little-endian host
 *   16      the MAC: HMAC-SHA-256 under the caller's key, cut to 16 bytes,
 *           of the context's length (4 bytes, little-endian), the context,
 *           the 13 bytes above and the payload
 *   ...     the payload: a message of the codec in wire mode (codec.h),
 *           which names no shared object
 *
 * The context is what the caller binds the message to (a pool, a task's
 * number, a direction), so that a message cannot be replayed elsewhere.
 * open checks, in order, the magic, the build and the MAC (in constant
 * time), and only then reads a byte of the payload: a forged message is
 * never decoded, not even its names of C functions.  The functions in the
 * payload are then re-signed under this family's key (lmp_msg_resign) and
 * the payload is decoded as any local message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "broker.h"

#define MAGIC "LMPW"
#define WIRE_VERSION 1
#define HDR 13 /* magic, version, build */
#define MACLEN 16
#define SEALED_MIN (HDR + MACLEN + 1)

static void build_bytes(unsigned char out[8]) {
  unsigned long rel = LUA_VERSION_RELEASE_NUM;
  const union { uint16_t u; unsigned char c[2]; } one = {1};
  out[0] = (unsigned char)rel;
  out[1] = (unsigned char)(rel >> 8);
  out[2] = (unsigned char)(rel >> 16);
  out[3] = (unsigned char)(rel >> 24);
  out[4] = (unsigned char)sizeof(lua_Integer);
  out[5] = (unsigned char)sizeof(lua_Number);
  out[6] = (unsigned char)sizeof(size_t);
  out[7] = one.c[0];
}

/* Pushes a build's description: "Lua 5.4.4 (64-bit integers, 64-bit
 * floats, little-endian)". */
static void push_build(lua_State *L, const unsigned char b[8]) {
  unsigned long rel = (unsigned long)b[0] | (unsigned long)b[1] << 8 |
                      (unsigned long)b[2] << 16 | (unsigned long)b[3] << 24;
  lua_pushfstring(L, "Lua %d.%d.%d (%d-bit integers, %d-bit floats, "
                  "%d-bit sizes, %s)", (int)(rel / 10000),
                  (int)(rel / 100 % 100), (int)(rel % 100), b[4] * 8,
                  b[5] * 8, b[6] * 8, b[7] ? "little-endian" : "big-endian");
}

static void mac_of(const char *key, size_t klen, const char *ctx, size_t clen,
                   const char *hdr, const char *payload, size_t plen,
                   unsigned char out[LMP_SHA256_SIZE]) {
  unsigned char cl[4];
  const void *parts[4];
  size_t lens[4];
  cl[0] = (unsigned char)clen;
  cl[1] = (unsigned char)(clen >> 8);
  cl[2] = (unsigned char)(clen >> 16);
  cl[3] = (unsigned char)(clen >> 24);
  parts[0] = cl, lens[0] = 4;
  parts[1] = ctx, lens[1] = clen;
  parts[2] = hdr, lens[2] = HDR;
  parts[3] = payload, lens[3] = plen;
  lmp_hmac_sha256_parts(key, klen, 4, parts, lens, out);
}

/* seal(key, context, value, [root]) -> string */
static int wire_seal(lua_State *L) {
  size_t klen, clen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *ctx = luaL_checklstring(L, 2, &clen);
  const char *root = luaL_optstring(L, 4, "value");
  unsigned char mac[LMP_SHA256_SIZE];
  lmp_buf *b;
  luaL_checkany(L, 3);
  lua_settop(L, 4);
  b = lmp_buf_new(L); /* 5: freed whatever happens */
  if (lmp_buf_reserve(b, 256) != 0) return lmp_nomem(L, 256);
  memcpy(b->data, MAGIC, 4);
  b->data[4] = WIRE_VERSION;
  build_bytes((unsigned char *)b->data + 5);
  memset(b->data + HDR, 0, MACLEN);
  b->len = HDR + MACLEN;
  lmp_encode_wire(L, 3, root, b, "a local %s cannot cross to another "
                  "machine");
  mac_of(key, klen, ctx, clen, b->data, b->data + HDR + MACLEN,
         b->len - HDR - MACLEN, mac);
  memcpy(b->data + HDR, mac, MACLEN);
  lua_pushlstring(L, b->data, b->len);
  return 1;
}

/* Compares n bytes in a time that does not depend on where they differ. */
static int same(const unsigned char *a, const unsigned char *b, size_t n) {
  unsigned d = 0;
  size_t i;
  for (i = 0; i < n; i++) d |= (unsigned)(a[i] ^ b[i]);
  return d == 0;
}

/* Checks a sealed message at idx against key and context; raises as open
 * does.  Returns the payload and its length. */
static const char *check(lua_State *L, int kidx, int cidx, int idx,
                         size_t *plen) {
  size_t klen, clen, n;
  const char *key = luaL_checklstring(L, kidx, &klen);
  const char *ctx = luaL_checklstring(L, cidx, &clen);
  const char *s = luaL_checklstring(L, idx, &n);
  unsigned char build[8], mac[LMP_SHA256_SIZE];
  if (n < SEALED_MIN || memcmp(s, MAGIC, 4) != 0)
    return lmp_throw(L, "AuthenticationError", "not a sealed luamp message"),
           NULL;
  build_bytes(build);
  if ((unsigned char)s[4] != WIRE_VERSION || memcmp(s + 5, build, 8) != 0) {
    if ((unsigned char)s[4] != WIRE_VERSION)
      lua_pushfstring(L, "wire version %d", (int)(unsigned char)s[4]);
    else
      push_build(L, (const unsigned char *)s + 5);
    push_build(L, build);
    return lmp_throw(L, "WireError", "the message was made by %s; this "
                     "process runs %s", lua_tostring(L, -2),
                     lua_tostring(L, -1)), NULL;
  }
  mac_of(key, klen, ctx, clen, s, s + HDR + MACLEN, n - HDR - MACLEN, mac);
  if (!same(mac, (const unsigned char *)s + HDR, MACLEN))
    return lmp_throw(L, "AuthenticationError", "the message's MAC is wrong "
                     "(another authkey, or a forged or altered message)"),
           NULL;
  *plen = n - HDR - MACLEN;
  return s + HDR + MACLEN;
}

/* open(key, context, sealed) -> value */
static int wire_open(lua_State *L) {
  size_t n;
  const char *p = check(L, 1, 2, 3, &n);
  lmp_buf *b;
  int rc;
  lua_settop(L, 3);
  b = lmp_buf_new(L); /* 4 */
  if (lmp_buf_reserve(b, n) != 0) return lmp_nomem(L, n);
  memcpy(b->data, p, n);
  b->len = n;
  rc = lmp_msg_resign(b->data, n);
  if (rc == -2)
    return luaL_error(L, "malformed message: it names a shared object");
  if (rc < 0) return luaL_error(L, "malformed message");
  lmp_decode(L, b->data, n);
  return 1;
}

/* verify(key, context, sealed) -> true, or raises as open: for a relay
 * that passes a message on without reading it. */
static int wire_verify(lua_State *L) {
  size_t n;
  check(L, 1, 2, 3, &n);
  lua_pushboolean(L, 1);
  return 1;
}

/* hmac(key, data) -> the 32 bytes of HMAC-SHA-256 */
static int wire_hmac(lua_State *L) {
  size_t klen, n;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *data = luaL_checklstring(L, 2, &n);
  unsigned char out[LMP_SHA256_SIZE];
  lmp_hmac_sha256(key, klen, data, n, out);
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

/* random_bytes(n) -> n bytes from the kernel's generator */
static int wire_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_Buffer B;
  char *p;
  size_t got = 0;
  luaL_argcheck(L, n >= 0 && n <= 4096, 1, "out of range");
  p = luaL_buffinitsize(L, &B, (size_t)n);
  while (got < (size_t)n) {
    ssize_t r = getrandom(p + got, (size_t)n - got, 0);
    if (r < 0) return luaL_error(L, "getrandom: %s", strerror(errno));
    got += (size_t)r;
  }
  luaL_pushresultsize(&B, (size_t)n);
  return 1;
}

/* wire_build() -> this build, as a sealed message's header names it */
static int wire_build(lua_State *L) {
  unsigned char b[8];
  build_bytes(b);
  push_build(L, b);
  return 1;
}

static const luaL_Reg wire_funcs[] = {
  {"seal", wire_seal}, {"open", wire_open}, {"verify", wire_verify},
  {"hmac", wire_hmac}, {"random_bytes", wire_random},
  {"wire_build", wire_build}, {NULL, NULL}
};

const lmp_family lmp_wire_family = {NULL, wire_funcs, NULL};
