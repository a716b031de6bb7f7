/* codec_c.c -- the C twin of codec.lua: the same record encoded and
 * decoded through the codec's C API (lmp_encode, lmp_decode), with no Lua
 * call in between, so that codec.lua's figures show what the calls from
 * Lua add.  Built by CMake against luamp's internals (target codec_c).
 * Prints: roundtrip <M round trips/s> M/s, roundtrip_ns, encode_ns,
 * decode_ns.
 * Usage: codec_c [N=1000000]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "codec/codec.h"
#include "twin.h"

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000, i;
  double t0, rt, enc, dec;
  lua_State *L;
  lmp_buf *b;
  int top;
  if (n <= 0 || lmp_arena_init(64 << 20) != 0) {
    fprintf(stderr, "codec_c: bad count or no arena\n");
    return 1;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dostring(L, "return {id = 12345, name = 'alpha', score = 3.5,"
                       " tags = {'a', 'b', 'c'}, ok = true}") != LUA_OK) {
    fprintf(stderr, "codec_c: %s\n", lua_tostring(L, -1));
    return 1;
  }
  b = lmp_buf_new(L);
  top = lua_gettop(L);

  /* Check once that the round trip is faithful, so that a broken codec
   * is not timed as a fast one. */
  lmp_encode(L, 1, "value", b);
  lmp_decode(L, b->data, b->len);
  lua_getfield(L, -1, "id");
  lua_getfield(L, -2, "name");
  if (lua_tointeger(L, -2) != 12345 || lua_tostring(L, -1) == NULL ||
      strcmp(lua_tostring(L, -1), "alpha") != 0) {
    fprintf(stderr, "codec_c: round trip changed the record\n");
    return 1;
  }
  lua_settop(L, top);

  for (i = 0; i < n / 10; i++) { /* warm up */
    b->len = 0;
    lmp_encode(L, 1, "value", b);
    lmp_decode(L, b->data, b->len);
    lua_settop(L, top);
  }

  t0 = now();
  for (i = 0; i < n; i++) {
    b->len = 0;
    lmp_encode(L, 1, "value", b);
    lmp_decode(L, b->data, b->len);
    lua_settop(L, top);
  }
  rt = (now() - t0) / (double)n;

  t0 = now();
  for (i = 0; i < n; i++) {
    b->len = 0;
    lmp_encode(L, 1, "value", b);
  }
  enc = (now() - t0) / (double)n;

  t0 = now();
  for (i = 0; i < n; i++) {
    lmp_decode(L, b->data, b->len);
    lua_settop(L, top);
  }
  dec = (now() - t0) / (double)n;

  printf("roundtrip %.3f M/s\n", 1e-6 / rt);
  printf("roundtrip_ns %.1f ns\n", rt * 1e9);
  printf("encode_ns %.1f ns\n", enc * 1e9);
  printf("decode_ns %.1f ns\n", dec * 1e9);
  lua_close(L);
  return 0;
}
