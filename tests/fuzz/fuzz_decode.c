/* fuzz_decode.c -- libFuzzer target for the message decoder: lmp_decode,
 * the outcome reader (lmp_decode_head, lmp_decode_into) and
 * lmp_msg_release must survive any bytes.  Run with LUAMP_FUZZ_SEEDS=dir to
 * write a starting corpus of real encoder outputs into dir instead.
 *
 *   cmake -S . -B build-fuzz -DLUAMP_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_decode
 *   LUAMP_FUZZ_SEEDS=corpus build-fuzz/fuzz_decode
 *   build-fuzz/fuzz_decode -max_total_time=60 corpus
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "types/types.h"

/* The arena key is random per run, which would make every function in a
 * stored corpus fail its signature check and hide the code behind it.  The
 * fuzzer fixes the key so that seeds written by one run stay valid. */
static const uint8_t fixed_key[16] = "luamp fuzz key!";

static lua_State *L;
static lmp_obj *live; /* a shared object for object references to hit */

/* Decodes from the fuzzer's own buffer, not a Lua copy, so that the
 * sanitizer sees a read even one byte past the end. */
static int pdecode(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

/* Reads an outcome as the Pool's board does: its head without Lua, then
 * the rest into a table. */
static int pinto(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  lua_Integer head[2];
  lua_Integer narr = lmp_decode_head(p, n, head, 2);
  if (narr >= 0 && (narr < 2 || (size_t)narr > n)) abort();
  lua_newtable(L);
  lmp_decode_into(L, p, n, -1, 10, 2);
  return 1;
}

/* Calls f on the fuzzer's bytes; it may fail only as a decoder does. */
static void run(lua_CFunction f, const uint8_t *data, size_t size) {
  lua_settop(L, 0);
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    const char *err = lua_tostring(L, -1);
    if (err == NULL || (strncmp(err, "malformed message: ", 19) != 0 &&
                        strncmp(err, "cannot receive ", 15) != 0)) {
      fprintf(stderr, "unexpected error: %s\n", err ? err : "(not a string)");
      abort();
    }
  }
  lua_settop(L, 0);
}

/* Values the seeds encode: every tag, shared references, joins, names,
 * the globals, an object, deep nesting and a large array. */
static const char *const seeds[] = {
  "nil", "true", "false", "0", "127", "128", "-1", "math.maxinteger",
  "math.mininteger", "0.5", "-0.0", "1/0", "0/0", "''", "'short'",
  "('x'):rep(200)", "'\\0\\1\\2'",
  "{1, 2, 3}", "{a = 1, b = {c = 'd'}}", "{1, nil, 3, x = true}",
  "(function() local t = {} t.t = t t[1] = t return t end)()",
  "(function() local a = {} return {a, a, [a] = a} end)()",
  "(function() local n = 0 local function f() n = n + 1 return n end "
  "local function g() return n, f end return {f, g} end)()",
  "(function() local function r(k) return k < 1 and 0 or r(k - 1) end "
  "return r end)()",
  "function() return print, string.format, _G, x end",
  "{string, math.floor, _G, io.write}",
  "blob",
  "{blob, {blob}}",
  "(function() local t = {} local r = t for i = 1, 199 do local x = {} "
  "r[1] = x r = x end return t end)()",
  "(function() local t = {} for i = 1, 1000 do t[i] = i end return t "
  "end)()",
  "(function() local t = {} for i = 1, 300 do t['k' .. i] = {i} end "
  "return t end)()",
  "{core.message({1, blob, 'x'}), core.message(core.message('in'))}",
  "setmetatable({type = 'Empty', message = 'm'}, "
  "debug.getregistry()['luamp.Error'])",
  "{16777217, 2, 'x', 4}", "{-5, 1, nil, 3}", "{1 << 40, -1, {}}",
  NULL
};

static void writeseeds(const char *dir) {
  lmp_buf *b;
  int i;
  for (i = 0; seeds[i] != NULL; i++) {
    char code[512], path[4096];
    FILE *f;
    snprintf(code, sizeof code, "return %s", seeds[i]);
    if (luaL_dostring(L, code) != LUA_OK) {
      fprintf(stderr, "seed %d: %s\n", i, lua_tostring(L, -1));
      exit(1);
    }
    b = lmp_buf_new(L);
    lmp_encode(L, -2, "seed", b);
    snprintf(path, sizeof path, "%s/seed-%02d", dir, i);
    if ((f = fopen(path, "wb")) == NULL ||
        fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
      perror(path);
      exit(1);
    }
    lmp_msg_release(b->data, b->len);
    lua_settop(L, 0);
  }
  printf("wrote %d seeds to %s\n", i, dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *dir = getenv("LUAMP_FUZZ_SEEDS");
  (void)argc;
  (void)argv;
  if (lmp_arena_init(16 << 20) != 0) abort();
  memcpy((uint8_t *)lmp_arena_key(), fixed_key, sizeof fixed_key);
  L = luaL_newstate();
  luaL_openlibs(L);
  lmp_error_open(L);
  lua_newtable(L);
  lmp_family_open(L, &lmp_blob_family);
  lmp_family_open(L, &lmp_codec_family);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "core");
  lua_getfield(L, -1, "blob");
  lua_pushinteger(L, 8);
  lua_call(L, 1, 1);
  live = lmp_toobj(L, -1);
  lua_setglobal(L, "blob");
  lua_settop(L, 0);
  if (dir != NULL) {
    writeseeds(dir);
    exit(0);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Fuzzed releases drop references the input never owned; keep the live
   * object far from zero so that it stays live. */
  atomic_store(&live->refs, 1 << 30);
  run(pdecode, data, size);
  run(pinto, data, size);
  lmp_msg_release((const char *)data, size);
  return 0;
}
