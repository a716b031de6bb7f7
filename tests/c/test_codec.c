/* test_codec.c -- round trips, error paths and hostile input of the
 * message codec.  Two lua_States stand for the sending and the receiving
 * process; shared objects are checked within one state.  Its speed is
 * measured by scripts/bench/codec_c.c.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lualib.h>

#include "types/types.h"

#include "check.h"

/* Lua helpers shared by the test chunks: same() compares type, subtype and
 * value (NaN equal to NaN, -0.0 apart from 0.0) and names both sides;
 * fails() runs f and wants exactly the error message `want`. */
static const char prelude[] =
  "function same(got, want, what)\n"
  "  local ok\n"
  "  if type(got) == 'number' and type(want) == 'number' then\n"
  "    if want ~= want then ok = got ~= got\n"
  "    else ok = got == want and math.type(got) == math.type(want)\n"
  "      and (want ~= 0 or 1/got == 1/want) end\n"
  "  else ok = rawequal(got, want) end\n"
  "  if not ok then\n"
  "    error(string.format('%s: got %s (%s), want %s (%s)', what or 'value',\n"
  "      tostring(got), math.type(got) or type(got),\n"
  "      tostring(want), math.type(want) or type(want)), 2)\n"
  "  end\n"
  "end\n"
  "function rt(v) return decode(encode(v)) end\n"
  "function fails(f, want)\n"
  "  local ok, err = pcall(f)\n"
  "  if ok then error('no error; wanted: ' .. want, 2) end\n"
  "  if err ~= want then\n"
  "    error(string.format('error: got %q, want %q', tostring(err), want), 2)\n"
  "  end\n"
  "end\n";

static int unnamed(lua_State *L) {
  lua_pushliteral(L, "unnamed");
  return 1;
}

static lua_State *newstate(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_register(L, "encode", lmp_codec_encode);
  lua_register(L, "decode", lmp_codec_decode);
  lua_register(L, "encode_slice", lmp_codec_encode_slice);
  lua_register(L, "decode_into", lmp_codec_decode_into);
  lua_newtable(L);
  lmp_family_open(L, &lmp_blob_family); /* core.blob(n): a shared object */
  lmp_family_open(L, &lmp_codec_family); /* core.message(v) */
  lua_setglobal(L, "core");
  /* A C function reachable from no module, and a light userdata. */
  lua_pushcfunction(L, unnamed);
  lua_setfield(L, LUA_REGISTRYINDEX, "test.unnamed");
  lua_pushlightuserdata(L, &check_failures);
  lua_setfield(L, LUA_REGISTRYINDEX, "test.light");
  if (luaL_dostring(L, prelude) != LUA_OK) {
    fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  return L;
}

/* Runs a test chunk; it reports failures by raising. */
#define RUN(L, code) run(L, code, __LINE__)
static void run(lua_State *L, const char *code, int line) {
  if (luaL_dostring(L, code) != LUA_OK)
    check_fail(__FILE__, line, "%s", lua_tostring(L, -1));
  lua_settop(L, 0);
}

static lua_State *S, *R; /* sender and receiver */

/* Copies the sender's global `msg` to the receiver. */
static void carry(void) {
  size_t n;
  const char *s;
  lua_getglobal(S, "msg");
  s = lua_tolstring(S, -1, &n);
  ASSERT_TRUE(s != NULL);
  lua_pushlstring(R, s ? s : "", s ? n : 0);
  lua_setglobal(R, "msg");
  lua_pop(S, 1);
}

static void test_scalars(void) {
  RUN(S,
      "local vals = {false, true, 0, 1, -1, 63, 64, 127, 128, -128, 255, 256,"
      "  2^31, -2^31, 2^53, math.maxinteger, math.mininteger,"
      "  math.maxinteger - 1, math.mininteger + 1, 1 << 62, -(1 << 62),"
      "  0.0, -0.0, 1.5, -1.5, 1/0, -1/0, 0/0, 1e308, 5e-324, 2.0^63,"
      "  3.0, math.pi, '', 'a', ('x'):rep(63), ('y'):rep(64),"
      "  ('z'):rep(100000), '\\0', 'a\\0b\\0', '\\255\\254\\0\\1'}\n"
      "local all = {}\n"
      "for i = 1, #vals do\n"
      "  same(rt(vals[i]), vals[i], 'scalar ' .. i)\n"
      "  all[i] = vals[i]\n"
      "end\n"
      "same(rt(nil), nil, 'nil')\n"
      "same(select('#', rt(nil)), 1, 'decode returns one value')\n"
      "local back = rt(all)\n"
      "for i = 1, #vals do same(back[i], vals[i], 'in table ' .. i) end\n"
      "same(#back, #vals, 'length')\n"
      "same(#encode(5), 2, 'small integers take one byte')\n"
      "same(#encode('abc'), 5, 'short strings take one tag byte')\n"
      "same(#encode(-1), 3, 'small negatives are zigzagged')\n"
      "msg = encode(all)\n");
  carry();
  RUN(R,
      "local t = decode(msg)\n"
      "same(t[1], false) same(t[2], true) same(t[16], math.maxinteger)\n"
      "same(t[17], math.mininteger) same(t[23], -0.0) same(t[26], 1/0)\n"
      "same(t[28], 0/0) same(t[41], '\\255\\254\\0\\1')\n");
}

static void test_tables(void) {
  RUN(S,
      "local t = {1, 2, 3, x = 'y', [1.5] = 'f', [true] = 't', [false] = 0,\n"
      "  [-7] = 'neg', [100] = 'far', sub = {a = {b = {c = 'deep'}}}}\n"
      "local r = rt(t)\n"
      "same(#r, 3) same(r[1], 1) same(r[3], 3) same(r.x, 'y')\n"
      "same(r[1.5], 'f') same(r[true], 't') same(r[false], 0)\n"
      "same(r[-7], 'neg') same(r[100], 'far') same(r.sub.a.b.c, 'deep')\n"
      /* holes end the array part; the rest still arrive */
      "local h = {1, 2, nil, 4, nil, nil, 7}\n"
      "local rh = rt(h)\n"
      "for i = 1, 7 do same(rh[i], h[i], 'hole ' .. i) end\n"
      /* a big table, with more than 255 pairs */
      "local big = {}\n"
      "for i = 1, 100000 do big[i] = i * 2 end\n"
      "for i = 1, 1000 do big['k' .. i] = -i end\n"
      "local rb = rt(big)\n"
      "same(#rb, 100000) same(rb[99999], 199998) same(rb.k1000, -1000)\n"
      "local n = 0 for _ in pairs(rb) do n = n + 1 end same(n, 101000)\n"
      /* cycles and shared references */
      "local c = {} c.self = c c[1] = c\n"
      "local rc = rt(c)\n"
      "same(rc.self, rc, 'cycle') same(rc[1], rc, 'cycle in array')\n"
      "local a = {v = 1}\n"
      "local s = rt({a, a, x = a, {y = a}})\n"
      "same(s[1], s[2], 'shared') same(s.x, s[1]) same(s[3].y, s[1])\n"
      "same(s[1].v, 1)\n"
      /* many tables: the seen set outgrows its inline slots */
      "local arr = {}\n"
      "for i = 1, 10000 do arr[i] = {i} end\n"
      "arr.again = arr[5000]\n"
      "local ra = rt(arr)\n"
      "same(ra.again, ra[5000], 'shared among many')\n"
      "same(ra[10000][1], 10000)\n"
      /* integer keys that live in the hash part */
      "local hk = {a = 1, b = 2, c = 3} hk[1] = 'x' hk[2] = 'y'\n"
      "local rk2 = rt(hk)\n"
      "same(rk2[1], 'x') same(rk2[2], 'y') same(rk2.c, 3)\n"
      /* tables as keys, shared with values */
      "local k = {name = 'key'}\n"
      "local rk = rt({[k] = 'v', k = k})\n"
      "same(rk[rk.k], 'v', 'table key') same(rk.k.name, 'key')\n"
      /* metatables are sent as tables, one per message however many
       * values have it */
      "local m = rt(setmetatable({1}, {__index = function() return 9 end}))\n"
      "same(m[5], 9, 'inherited')\n"
      "local C = {}; C.__index = C; function C.get(o) return o.v end\n"
      "local o = rt(setmetatable({v = 4}, C))\n"
      "same(o:get(), 4, 'method') same(getmetatable(o).__index, getmetatable(o))\n"
      "local z = rt(setmetatable({1}, {__index = {}, __len = function() return 0 end}))\n"
      "same(#z, 0, 'other metatables') same(z[1], 1, 'their table')\n"
      "local k = rt(setmetatable({n = 5}, {__call = function(s, x)\n"
      "  return s.n + x end}))\n"
      "same(k(2), 7, 'a callable table')\n"
      "local shared = {__index = function(_, key) return key .. '!' end}\n"
      "local pair = rt({setmetatable({}, shared), setmetatable({}, shared)})\n"
      "same(getmetatable(pair[1]), getmetatable(pair[2]), 'one metatable')\n"
      "same(pair[2].hi, 'hi!', 'its __index')\n"
      /* 200 nested tables go; 201 do not */
      "local function nest(n)\n"
      "  local t = {} local r = t\n"
      "  for i = 2, n do local x = {} r[1] = x r = x end\n"
      "  return t\n"
      "end\n"
      "local d = rt(nest(200))\n"
      "for i = 2, 200 do d = d[1] end same(next(d), nil, 'innermost')\n"
      "local ok, err = pcall(encode, nest(201))\n"
      "same(ok, false)\n"
      "assert(err:find('^cannot send value%[1%]'), err)\n"
      "assert(err:find('%.%.%.: nesting too deep$'), err)\n"
      "assert(#err < 260, 'path is capped: ' .. #err)\n"
      "same(pcall(encode, nest(10000)), false, 'very deep')\n");
}

static void test_functions(void) {
  RUN(S,
      "who = 'sender'\n"
      "local n = 0\n"
      "local function inc() n = n + 1 return n end\n"
      "local function get() return n end\n"
      "local function fact(k) return k <= 1 and 1 or k * fact(k - 1) end\n"
      "local t\n"
      "local function h() return t end\n"
      "t = {h}\n"
      "local function k() return t end\n"
      "local fmt, str, g = string.format, string, _G\n"
      "local function env() return who, fmt('%d', 7), str.upper('x'), g end\n"
      "local function boom() error('boom') end\n"
      "local function zero() return 0 end\n"
      "local cnt, many = 0, {}\n"
      "for i = 1, 50 do many[i] = function() cnt = cnt + i return cnt end end\n"
      "msg = encode({inc = inc, get = get, fact = fact, k = k, env = env,\n"
      "              boom = boom, twice = {inc, inc}, zero = zero,\n"
      "              many = many})\n"
      "same(encode(fact), encode(fact), 'encoding is repeatable')\n");
  carry();
  RUN(R,
      "who = 'receiver'\n"
      "local f = decode(msg)\n"
      "same(f.inc(), 1) same(f.inc(), 2) same(f.get(), 2, 'shared upvalue')\n"
      "same(f.twice[1], f.inc, 'same function twice')\n"
      "same(f.fact(10), 3628800, 'recursive local function')\n"
      "local t = f.k()\n"
      "same(t[1](), t, 'upvalue shared through a table')\n"
      "local w, s, u, g = f.env()\n"
      "same(w, 'receiver', '_ENV rebinds') same(s, '7') same(u, 'X')\n"
      "same(g, _G, 'globals by reference')\n"
      "same(f.zero(), 0, 'no upvalues')\n"
      "same(f.many[1](), 1) same(f.many[2](), 3) same(f.many[50](), 53)\n"
      "local ok, err = pcall(f.boom)\n"
      "assert(err:find(':%d+: boom$'), 'line info kept: ' .. err)\n");
}

static void test_names(void) {
  RUN(S,
      "msg = encode({string.format, string, math.floor, print, math,\n"
      "              require, io.write, string.format})\n"
      "same(rt(string.format), string.format, 'C function by name')\n"
      "same(rt(string), string, 'module by name')\n");
  carry();
  RUN(R,
      "local t = decode(msg)\n"
      "same(t[1], string.format) same(t[2], string) same(t[3], math.floor)\n"
      "same(t[4], print) same(t[5], math) same(t[6], require)\n"
      "same(t[7], io.write) same(t[8], t[1])\n");
  /* A module loaded after the names were cached is found on a miss, and a
   * module name with a dot is one name. */
  RUN(S,
      "local unnamed = debug.getregistry()['test.unnamed']\n"
      "fails(function() encode({f = unnamed}) end,\n"
      "  'cannot send value.f: C function not named in package.loaded')\n"
      "package.loaded['my.mod'] = {cf = unnamed}\n"
      "same(rt(unnamed), unnamed, 'found after a rebuild')\n"
      "msg = encode(unnamed)\n");
  carry();
  RUN(R,
      "fails(function() decode(msg) end,\n"
      "  'cannot receive C function my.mod.cf: not loaded here')\n"
      "package.loaded['my.mod'] = {cf = print}\n"
      "same(decode(msg), print, 'resolved by name here')\n");
}

static void test_errors(void) {
  RUN(S,
      "local co = coroutine.create(print)\n"
      "fails(function() encode(co) end, 'cannot send value: thread')\n"
      "fails(function() encode({1, {file = io.stdout}}) end,\n"
      "  'cannot send value[2].file: userdata (FILE*)')\n"
      "local fh = io.stdout\n"
      "local function w() return fh end\n"
      "fails(function() encode({w}) end,\n"
      "  'cannot send value[1]<upvalue fh>: userdata (FILE*)')\n"
      "fails(function() encode({['a b'] = co}) end,\n"
      "  'cannot send value[\"a b\"]: thread')\n"
      "fails(function() encode({['end'] = co}) end,\n"
      "  'cannot send value[\"end\"]: thread')\n"
      "fails(function() encode({['q\"\\n'] = co}) end,\n"
      "  'cannot send value[\"q\\\\\"\\\\n\"]: thread')\n"
      "fails(function() encode({[true] = co}) end,\n"
      "  'cannot send value[true]: thread')\n"
      "fails(function() encode({[2.5] = co}) end,\n"
      "  'cannot send value[2.5]: thread')\n"
      "fails(function() encode({[{}] = co}) end,\n"
      "  'cannot send value[<table>]: thread')\n"
      "fails(function() encode({x = {[co] = 1}}) end,\n"
      "  'cannot send value.x[<key>]: thread')\n"
      "fails(function() encode({[{y = co}] = 1}) end,\n"
      "  'cannot send value[<key>].y: thread')\n"
      "local reg = debug.getregistry()\n"
      "fails(function() encode({reg['test.light']}) end,\n"
      "  'cannot send value[1]: light userdata')\n"
      "local b = core.blob(8) b:close()\n"
      "fails(function() encode({b}) end,\n"
      "  'cannot send value[1]: closed luamp.Blob')\n");
}

/* Messages kept for the hostile-input tests. */
#define NMSG 16
static char *msgs[NMSG];
static size_t lens[NMSG];
static int nmsgs;

static void keep(lua_State *L, const char *expr) {
  char code[1024];
  size_t n;
  const char *s;
  snprintf(code, sizeof code, "return encode(%s)", expr);
  if (luaL_dostring(L, code) != LUA_OK) {
    CHECK_FAIL("encode %s: %s", expr, lua_tostring(L, -1));
    lua_settop(L, 0);
    return;
  }
  s = lua_tolstring(L, -1, &n);
  msgs[nmsgs] = malloc(n);
  memcpy(msgs[nmsgs], s, n);
  lens[nmsgs++] = n;
  lua_settop(L, 0);
}

static int pdecode(lua_State *L) {
  size_t n;
  const char *s = lua_tolstring(L, 1, &n);
  lmp_decode(L, s, n);
  return 1;
}

/* Decodes [s, s+n) in R under pcall; returns the error or NULL. */
static const char *trydecode(const char *s, size_t n) {
  static char err[256];
  int rc;
  lua_settop(R, 0);
  lua_pushcfunction(R, pdecode);
  lua_pushlstring(R, s, n);
  rc = lua_pcall(R, 1, 1, 0);
  lmp_msg_release(s, n);
  if (rc == LUA_OK) return NULL;
  snprintf(err, sizeof err, "%s", lua_tostring(R, -1));
  lua_settop(R, 0);
  return err;
}

static void test_hostile(void) {
  static const unsigned char flips[] = {0x01, 0x10, 0x40, 0x80, 0xff};
  int i, m;
  size_t k;
  char *tmp;
  RUN(S,
      "who = 1 local up = {1, 2}\n"
      "local function f(x) return up, who, string.rep(x, 2) end\n"
      "local function g() return up, f end\n"
      "local c = {} c.c = c\n"
      "samples = {\n"
      "  f = f, g = g, c = c, mods = {string, math.max, _G},\n"
      "  mixed = {1, 'two', 3.5, {x = -1, [{}] = true}, ('s'):rep(300)},\n"
      "}\n");
  keep(S, "samples");
  keep(S, "samples.f");
  keep(S, "samples.g");
  keep(S, "samples.c");
  keep(S, "samples.mods");
  keep(S, "samples.mixed");
  keep(S, "-12345678901");
  keep(S, "0/0");
  /* Every valid message decodes; every proper prefix is "truncated". */
  for (m = 0; m < nmsgs; m++) {
    const char *err = trydecode(msgs[m], lens[m]);
    if (err != NULL) CHECK_FAIL("message %d: %s", m, err);
    for (k = 0; k < lens[m]; k++) {
      tmp = malloc(k ? k : 1); /* exact size, so ASan sees overreads */
      memcpy(tmp, msgs[m], k);
      err = trydecode(tmp, k);
      if (k == 0)
        ASSERT_STREQ(err, "malformed message: empty");
      else
        ASSERT_STREQ(err, "malformed message: truncated");
      free(tmp);
    }
  }
  /* Single byte changes anywhere give a value or a clean error. */
  for (m = 0; m < nmsgs; m++) {
    tmp = malloc(lens[m]);
    for (k = 0; k < lens[m]; k++)
      for (i = 0; i < (int)sizeof flips; i++) {
        const char *err;
        memcpy(tmp, msgs[m], lens[m]);
        tmp[k] ^= (char)flips[i];
        err = trydecode(tmp, lens[m]);
        if (err != NULL && strncmp(err, "malformed message: ", 19) != 0 &&
            strncmp(err, "cannot receive ", 15) != 0)
          CHECK_FAIL("flip %d@%zu of message %d: %s", flips[i], k, m, err);
      }
    free(tmp);
  }
  /* Changed bytecode is refused by its signature. */
  tmp = malloc(lens[1]);
  memcpy(tmp, msgs[1], lens[1]);
  tmp[20] ^= 1;
  ASSERT_STREQ(trydecode(tmp, lens[1]),
                "malformed message: bad function signature");
  free(tmp);
  ASSERT_STREQ(trydecode("\2\0", 2), "malformed message: unknown version");
  ASSERT_STREQ(trydecode("\1\0\0", 3), "malformed message: trailing bytes");
  ASSERT_STREQ(trydecode("\1\x3f", 2), "malformed message: unknown tag");
  ASSERT_STREQ(trydecode("\1\x08\x01", 3), "malformed message: bad reference");
  ASSERT_STREQ(trydecode("\1\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 12),
                "malformed message: integer out of range");
  ASSERT_STREQ(trydecode("\1\x05\xff\xff\xff\xff\x0f", 7),
                "malformed message: truncated");
  ASSERT_STREQ(trydecode("\1\x06\x05\x00\x00", 5),
                "malformed message: truncated");
  ASSERT_STREQ(trydecode("\1\x0d\x01\x40", 4),
                "malformed message: bad object reference");
  /* Random bytes after a version byte. */
  srand(1);
  tmp = malloc(64);
  for (m = 0; m < 200000; m++) {
    size_t n = 1 + (size_t)(rand() % 63);
    const char *err;
    tmp[0] = 1;
    for (k = 1; k < n; k++) tmp[k] = (char)(rand() % 24);
    err = trydecode(tmp, n);
    if (err != NULL && strncmp(err, "malformed message: ", 19) != 0 &&
        strncmp(err, "cannot receive ", 15) != 0)
      CHECK_FAIL("random input %d: %s", m, err);
  }
  free(tmp);
  for (m = 0; m < nmsgs; m++) free(msgs[m]);
}

/* A peer's bytecode (lmp_codecheck): what string.dump writes passes, in
 * whole; a prefix, a byte more, or a count that disagrees with what it
 * sizes is refused; and any single byte changed is refused or loads. */
typedef struct {
  const char *p;
  size_t n;
} reader_state;

static const char *read_once(lua_State *L, void *ud, size_t *n) {
  reader_state *r = ud;
  (void)L;
  *n = r->n;
  r->n = 0;
  return *n ? r->p : NULL;
}

static int loads(const char *code, size_t n) {
  int ok;
  reader_state r;
  r.p = code;
  r.n = n;
  ok = lua_load(R, read_once, &r, "=peer", "b") == LUA_OK;
  lua_settop(R, 0);
  return ok;
}

static void test_bytecode(void) {
  static const char *const fns[] = {
    "function() return 1 end",
    "(function() local up = {} return function(x) return up, x end end)()",
    "function(...) local a, b, c = 1.5, 'k' .. ('s'):rep(60), {...}\n"
    "  return function() return a, b, c, nil, true, false, 7 end end",
    "(function() local u, v = 1, 2 return function()\n"
    "  return function() return function() return u + v end end end end)()",
  };
  const char *code;
  char *tmp;
  size_t n, k;
  int f, strip, b;
  for (f = 0; f < (int)(sizeof fns / sizeof fns[0]); f++)
    for (strip = 0; strip <= 1; strip++) {
      lua_pushfstring(S, "return string.dump(%s, %s)", fns[f],
                      strip ? "true" : "false");
      if (luaL_dostring(S, lua_tostring(S, -1)) != LUA_OK) {
        CHECK_FAIL("dump %d: %s", f, lua_tostring(S, -1));
        return;
      }
      code = lua_tolstring(S, -1, &n);
      ASSERT_EQ(lmp_codecheck(code, n), 0);
      ASSERT_TRUE(loads(code, n));
      tmp = malloc(n + 1);
      for (k = 0; k < n; k++) {
        memcpy(tmp, code, k); /* exact, so ASan sees an overread */
        if (lmp_codecheck(tmp, k) != -1) CHECK_FAIL("prefix %zu of %d", k, f);
      }
      memcpy(tmp, code, n);
      tmp[n] = '\x80';
      ASSERT_EQ(lmp_codecheck(tmp, n + 1), -1);
      /* The closure's byte, after the 31 of the header. */
      tmp[31]++;
      ASSERT_EQ(lmp_codecheck(tmp, n), -1);
      tmp[31]--;
      for (k = 0; k < n; k++)
        for (b = 0; b < 8; b++) {
          tmp[k] ^= (char)(1 << b);
          if (lmp_codecheck(tmp, n) == 0) (void)loads(tmp, n);
          tmp[k] ^= (char)(1 << b);
        }
      free(tmp);
      lua_settop(S, 0);
    }
  /* What Lua 5.4.4's loader would write past the upvalues with: more
   * upvalue names than upvalues (the last count of the chunk). */
  if (luaL_dostring(S, "local d = string.dump(function() return 1 end)\n"
                       "return d:sub(1, -2) .. '\\x82\\x80\\x80'") != LUA_OK)
    CHECK_FAIL("%s", lua_tostring(S, -1));
  code = lua_tolstring(S, -1, &n);
  ASSERT_EQ(lmp_codecheck(code, n), -1);
  lua_settop(S, 0);
}

static int encode_args(lua_State *L) {
  lmp_encode(L, 1, "args", lmp_buf_new(L));
  return 0;
}

static void test_objects(void) {
  lmp_buf *b;
  lmp_obj *o;
  int refs;
  RUN(S, "blob = core.blob(16) blob:set('shared')");
  lua_getglobal(S, "blob");
  o = lmp_toobj(S, -1);
  ASSERT_TRUE(o != NULL);
  if (o == NULL) return;
  refs = lmp_obj_refs(o);
  /* Each occurrence in a message is one reference the message owns. */
  RUN(S, "pair = {blob, {blob}}");
  b = lmp_buf_new(S);
  lua_getglobal(S, "pair");
  lmp_encode(S, -1, "value", b);
  ASSERT_EQ(lmp_obj_refs(o), refs + 2);
  lmp_decode(S, b->data, b->len);
  lua_setglobal(S, "got");
  RUN(S,
      "same(got[1]:get(), 'shared\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0')\n"
      "got[1]:set('changed')\n"
      "same(blob:get():sub(1, 7), 'changed', 'the same shared object')\n");
  /* The decoded handles count in this process's hold, not as references. */
  lmp_msg_release(b->data, b->len);
  ASSERT_EQ(lmp_obj_refs(o), refs);
  /* An encoding that fails takes no references. */
  b->len = 0;
  RUN(S, "bad = {blob, coroutine.create(print)}");
  lua_getglobal(S, "bad");
  lua_pushcfunction(S, lmp_codec_encode);
  lua_pushvalue(S, -2);
  ASSERT_EQ(lua_pcall(S, 1, 1, 0), LUA_ERRRUN);
  ASSERT_STREQ(lua_tostring(S, -1), "cannot send value[2]: thread");
  ASSERT_EQ(lmp_obj_refs(o), refs);
  /* A message after other bytes in the buffer counts from its own start;
   * the Lua encode() owns no references. */
  lua_settop(S, 0);
  b = lmp_buf_new(S);
  memcpy(b->data = malloc(4), "head", 4);
  b->len = b->cap = 4;
  lua_getglobal(S, "blob");
  lmp_encode(S, -1, "value", b);
  ASSERT_EQ(lmp_obj_refs(o), refs + 1);
  ASSERT_TRUE(memcmp(b->data, "head", 4) == 0);
  lmp_msg_release(b->data + 4, b->len - 4);
  ASSERT_EQ(lmp_obj_refs(o), refs);
  /* An object reached through an upvalue counts too; a failure names the
   * root it was given. */
  lua_settop(S, 0);
  b = lmp_buf_new(S);
  RUN(S, "local x = blob function usesblob() return x end");
  lua_getglobal(S, "usesblob");
  lmp_encode(S, -1, "args", b);
  ASSERT_EQ(lmp_obj_refs(o), refs + 1);
  lmp_msg_release(b->data, b->len);
  ASSERT_EQ(lmp_obj_refs(o), refs);
  lua_pushcfunction(S, encode_args);
  lua_getglobal(S, "bad");
  ASSERT_EQ(lua_pcall(S, 1, 0, 0), LUA_ERRRUN);
  ASSERT_STREQ(lua_tostring(S, -1), "cannot send args[2]: thread");
  RUN(S, "local s = encode(blob) same(rt(blob):get(), blob:get())");
  ASSERT_EQ(lmp_obj_refs(o), refs);
  RUN(S, "got = nil collectgarbage() collectgarbage()");
  ASSERT_EQ(lmp_obj_refs(o), refs);
  lua_settop(S, 0);
}

/* A process killed while it takes or drops the counted references of a
 * message naming two objects leaves, once its reaper has settled its last
 * change, the references of the first `count` objects held: releasing
 * that many (as a container's reaper does) leaves both as they were.  A
 * drop that went first to last would leave the first object short and the
 * second over. */
static void test_counted_killed(void) {
  enum { KILLS = 200, ROUNDS = 64 };
  lmp_obj *a, *b;
  lmp_buf *buf;
  char *p;
  size_t n;
  _Atomic uint64_t *count;
  uint32_t a0, b0;
  unsigned long long rng = 0x9e3779b97f4a7c15ull;
  int k;
  RUN(S, "ka, kb = core.blob(8), core.blob(8)");
  lua_getglobal(S, "ka");
  a = lmp_toobj(S, -1);
  lua_getglobal(S, "kb");
  b = lmp_toobj(S, -1);
  ASSERT_TRUE(a != NULL && b != NULL && a != b);
  if (a == NULL || b == NULL) return;
  a0 = lmp_obj_refs(a);
  b0 = lmp_obj_refs(b);
  /* The bytes of {ka, kb} in the arena, owning no reference. */
  RUN(S, "kpair = {ka, kb}");
  buf = lmp_buf_new(S);
  lua_getglobal(S, "kpair");
  lmp_encode(S, -1, "value", buf);
  n = buf->len;
  p = lmp_alloc(n);
  count = lmp_alloc(sizeof *count);
  ASSERT_TRUE(p != NULL && count != NULL);
  if (p == NULL || count == NULL) return;
  memcpy(p, buf->data, n);
  lmp_msg_release(buf->data, n);
  atomic_store(count, 0);
  ASSERT_EQ(lmp_obj_refs(a), a0);
  for (k = 0; k < KILLS; k++) {
    int slot = lmp_slot_prepare(1), r;
    pid_t pid;
    ASSERT_TRUE(slot > 0);
    if (slot <= 0) return;
    pid = fork();
    if (pid == 0) {
      lmp_slot_adopt((uint32_t)slot);
      for (;;) {
        lmp_msg_retain_counted(p, n, count);
        lmp_msg_unretain_counted(p, n, count);
      }
    }
    for (r = 0; r < ROUNDS; r++) { /* a little time, differing each kill */
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
    }
    usleep((useconds_t)(rng % 1500));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    lmp_slot_release((uint32_t)slot);
    lmp_msg_release_counted(p, n, atomic_load(count));
    atomic_store(count, 0);
    if (lmp_obj_refs(a) != a0 || lmp_obj_refs(b) != b0)
      CHECK_FAIL("kill %d left refs %u and %u, not %u and %u", k,
                 lmp_obj_refs(a), lmp_obj_refs(b), a0, b0);
  }
  lmp_free((void *)count);
  lmp_free(p);
  RUN(S, "ka, kb, kpair = nil collectgarbage()");
}

static void test_buf(void) {
  lmp_buf b = {0};
  ASSERT_EQ(lmp_buf_reserve(&b, 10), 0);
  ASSERT_EQ(b.cap, 128);
  b.len = 128;
  ASSERT_EQ(lmp_buf_reserve(&b, 1), 0);
  ASSERT_EQ(b.cap, 256); /* small appends double it */
  b.len = 200;
  ASSERT_EQ(lmp_buf_reserve(&b, 56), 0);
  ASSERT_EQ(b.cap, 256); /* room enough: unchanged */
  ASSERT_EQ(lmp_buf_reserve(&b, 1000), 0);
  ASSERT_EQ(b.cap, 1200); /* one past doubling: exactly what it asks */
  ASSERT_EQ(lmp_buf_reserve(&b, SIZE_MAX - 5), -ENOMEM);
  ASSERT_EQ(b.cap, 1200);
  lmp_buf_free(&b);
  lmp_buf_free(&b); /* idempotent */
  ASSERT_TRUE(b.data == NULL);
}

/* encbuf(v): the message lmp_encode writes into an lmp_buf, as a string. */
static int encbuf(lua_State *L) {
  lmp_buf *b = lmp_buf_new(L);
  lmp_encode(L, 1, "value", b);
  lmp_msg_release(b->data, b->len);
  lua_pushlstring(L, b->data, b->len);
  return 1;
}

/* encode() builds its string in a C array, in a buffer it moves to when
 * that overflows, or around gaps that big strings fill as the result is
 * made; every way must give the bytes lmp_encode gives. */
/* encode_slice writes t[i..j] as table.pack would; decode_into stores the
 * array items of a table message into another table at an offset. */
static void test_slices(void) {
  RUN(S,
      "local t = {10, 20, nil, 'x', {a = 1}, n = 9}\n"
      "local r = decode(encode_slice(t, 2, 5))\n"
      "same(r.n, 4) same(r[1], 20) same(r[2], nil) same(r[3], 'x')\n"
      "same(r[4].a, 1)\n"
      "local k = 0 for _ in pairs(r) do k = k + 1 end same(k, 4, 'no more')\n"
      /* the same bytes as the table itself, n and all */
      "same(encode_slice(t, 1, 2), encode({10, 20, n = 2}))\n"
      /* empty and out-of-range slices */
      "same(decode(encode_slice(t, 3, 2)).n, 0)\n"
      "same(decode(encode_slice(t, 5, 1)).n, 0)\n"
      "local far = decode(encode_slice(t, 100, 102))\n"
      "same(far.n, 3) same(next(far), 'n')\n"
      "local m = math.maxinteger\n"
      "same(decode(encode_slice({[m] = 'top'}, m, m))[1], 'top')\n"
      "local ok, e = pcall(encode_slice, t, math.mininteger, m)\n"
      "same(ok, false) assert(e:find('too many items'), e)\n"
      /* an unsendable item is named by its index in t */
      "ok, e = pcall(encode_slice, {1, 2, {3, print}, io.stdout}, 3, 4, 'it')\n"
      "same(ok, false) same(e, 'cannot send it[4]: userdata (FILE*)')\n"
      /* shared tables among the items stay shared */
      "local s = {v = 1}\n"
      "local rs = decode(encode_slice({s, s, s}, 2, 3))\n"
      "same(rs[1], rs[2], 'shared')\n"
      /* decode_into */
      "local out = {1, 2, 3}\n"
      "same(decode_into(encode_slice({'a', nil, 'c'}, 1, 3), out, 3), 3)\n"
      "same(out[1], 1) same(out[2], 2) same(out[3], 'a') same(out[4], nil)\n"
      "same(out[5], 'c') same(out.n, nil, 'fields are dropped')\n"
      "local top = {}\n"
      "same(decode_into(encode_slice({7}, 1, 1), top, m), 1) same(top[m], 7)\n"
      "local c = {} c[1] = c\n"
      "local into = {}\n"
      "same(decode_into(encode(c), into, 1), 1) same(into[1], into, 'a ref')\n"
      "ok, e = pcall(decode_into, encode(5), {}, 1)\n"
      "same(ok, false) same(e, 'malformed message: not a table')\n"
      "ok, e = pcall(decode_into, encode({1, 2}):sub(1, -2), {}, 1)\n"
      "same(ok, false) same(e, 'malformed message: truncated')\n");
}

static void test_strings(void) {
  lmp_buf b = {0};
  lua_register(S, "encbuf", encbuf);
  RUN(S,
      "local big, mid = ('b'):rep(1 << 20), ('m'):rep(20000)\n"
      "local many = {}\n"
      "for i = 1, 40 do many[i] = i % 2 == 0 and (i .. mid) or i end\n"
      "local fill = {}\n"
      "for i = 1, 300 do fill[i] = 'item' .. i end\n"
      "local function f() return big, fill end\n"
      "local vals = {\n"
      "  ('x'):rep(63), ('y'):rep(64), ('s'):rep(2000), mid, big,\n"
      "  {big, big, x = big, y = 'small'}, many, fill, f,\n"
      "  {mid, f, fill, mid .. 'z', [mid] = big},\n"
      "}\n"
      "for i, v in ipairs(vals) do\n"
      "  local m = encode(v)\n"
      "  same(m, encbuf(v), 'the same bytes for value ' .. i)\n"
      "  vals[i] = decode(m)\n"
      "end\n"
      "same(vals[5], big, 'a big string')\n"
      "same(vals[6][1], big) same(vals[6].x, big) same(vals[6].y, 'small')\n"
      "for i = 1, 40 do\n"
      "  same(vals[7][i], i % 2 == 0 and (i .. mid) or i, 'gap ' .. i)\n"
      "end\n"
      "same(#vals[8], 300) same(vals[8][300], 'item300')\n"
      "local b2, fill2 = vals[9]()\n"
      "same(b2, big, 'upvalue') same(fill2[17], 'item17')\n"
      "local t = vals[10]\n"
      "same(t[1], mid) same(t[4], mid .. 'z') same(t[mid], big)\n"
      "same(t[3], select(2, t[2]()), 'a table shared with an upvalue')\n"
      "same(#encode(mid), 1 + 1 + 3 + 20000, 'no padding')\n"
      /* long Messages fill gaps too, in a string as in a Message */
      "local lm, sm = core.message(big), core.message('small')\n"
      "local v = {lm, mid, sm, core.message({lm, mid})}\n"
      "local m = encode(v)\n"
      "same(m, encbuf(v), 'the same bytes with Messages')\n"
      "local w = decode(m)\n"
      "same(decode(w[1]), big) same(w[2], mid) same(decode(w[3]), 'small')\n"
      "local nested = decode(w[4])\n"
      "same(decode(nested[1]), big) same(nested[2], mid)\n"
      "same(core.message(v):bytes(), m, 'a Message of the same bytes')\n");
  /* A big string is reserved at its exact size: no doubling, no slack. */
  RUN(S, "bigstr = ('q'):rep(1 << 20)");
  lua_getglobal(S, "bigstr");
  lmp_encode(S, -1, "value", &b);
  ASSERT_EQ(b.len, 1 + 1 + 3 + (1 << 20));
  ASSERT_EQ(b.cap, b.len);
  ASSERT_TRUE(b.data && memcmp(b.data + 5, "qqqq", 4) == 0);
  lmp_buf_free(&b);
  lua_settop(S, 0);
}

/* equal(a, b): lmp_msg_equal of two encoded strings. */
static int equal(lua_State *L) {
  size_t n, m;
  const char *p = luaL_checklstring(L, 1, &n), *q = luaL_checklstring(L, 2, &m);
  lua_pushboolean(L, lmp_msg_equal(p, n, q, m));
  return 1;
}

static void test_equal(void) {
  lua_register(S, "equal", equal);
  RUN(S,
      "local function eq(a, b, what)\n"
      "  same(equal(encode(a), encode(b)), true, what)\n"
      "  same(equal(encode(b), encode(a)), true, what .. ' (swapped)')\n"
      "end\n"
      "local function ne(a, b, what)\n"
      "  same(equal(encode(a), encode(b)), false, what)\n"
      "  same(equal(encode(b), encode(a)), false, what .. ' (swapped)')\n"
      "end\n"
      "eq(1, 1.0, '1 and 1.0') eq('abc', 'ab' .. 'c', 'strings')\n"
      "ne(0/0, 0/0, 'NaN') ne({0/0}, {0/0}, 'NaN inside')\n"
      "ne(2^53, (1 << 53) + 1, 'a float is not rounded')\n"
      "ne(1, '1', 'number and string') ne(false, nil, 'false and nil')\n"
      "local a, b = {}, {}\n"
      "for i = 1, 30 do a['k' .. i] = i end\n"
      "for i = 30, 1, -1 do b['k' .. i] = i end\n"
      "eq(a, b, 'key order') b.k7 = 7.5 ne(a, b, 'a value differs')\n"
      "local r = {} r[3], r[2], r[1] = 3, 2, 1\n"
      "eq(r, {1, 2, 3}, 'array part and pairs') ne(r, {1, 2}, 'a key more')\n"
      "eq({[{1}] = 1, [{2}] = 2}, {[{2}] = 2, [{1}] = 1}, 'table keys')\n"
      "ne({[{1}] = 1, [{2}] = 2}, {[{2}] = 1, [{1}] = 2}, 'swapped values')\n"
      "local c, d = {}, {} c.me = c d.me = d\n"
      "eq(c, d, 'cycles') ne(c, {me = {}}, 'a cycle and a table')\n"
      "local s = {1} eq({s, s}, {{1}, {1}}, 'shared parts')\n"
      "local f = function() return 1 end\n"
      "eq(f, f, 'a function') ne(f, function() return 2 end, 'code')\n"
      "local o1, o2 = core.blob(8), core.blob(8)\n"
      "eq({o = o1}, {o = o1}, 'an object') ne(o1, o2, 'two objects')\n"
      "local k1, k2 = {[o1] = 1, [o2] = 2, x = 3}, {x = 3}\n"
      "k2[o2] = 2 k2[o1] = 1\n"
      "eq(k1, k2, 'objects as keys')\n"
      "k2[o1] = 2 ne(k1, k2, 'a value under an object')\n"
      "o1:close() o2:close()\n"
      "same(equal('', ''), false, 'not a message')\n"
      "same(equal(encode({1}), encode({1}):sub(1, -2)), false, 'truncated')\n");
}

/* SHA-256 against FIPS 180-4's examples (one and two blocks, a million
 * 'a's fed in uneven parts) and HMAC-SHA-256 against RFC 4231's cases 1, 2
 * and 6 (a key longer than a block). */
static void hex(const unsigned char *d, char out[65]) {
  int i;
  for (i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void sha(const char *msg, const char *want) {
  lmp_sha256 s;
  unsigned char d[LMP_SHA256_SIZE];
  char got[65];
  lmp_sha256_init(&s);
  lmp_sha256_update(&s, msg, strlen(msg));
  lmp_sha256_final(&s, d);
  hex(d, got);
  ASSERT_STREQ(got, want);
}

static void test_sha256(void) {
  static char a[1000];
  lmp_sha256 s;
  unsigned char d[LMP_SHA256_SIZE], key[131];
  char got[65];
  size_t i, n;
  sha("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  sha("abc",
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  memset(a, 'a', sizeof a);
  lmp_sha256_init(&s);
  for (i = 0, n = 0; n < 1000000; i++) {
    size_t k = i % 97 + 1;
    if (k > 1000000 - n) k = 1000000 - n;
    lmp_sha256_update(&s, a, k);
    n += k;
  }
  lmp_sha256_final(&s, d);
  hex(d, got);
  ASSERT_STREQ(
    got, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  memset(key, 0x0b, 20);
  lmp_hmac_sha256(key, 20, "Hi There", 8, d);
  hex(d, got);
  ASSERT_STREQ(
    got, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  lmp_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d);
  hex(d, got);
  ASSERT_STREQ(
    got, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  memset(key, 0xaa, sizeof key);
  lmp_hmac_sha256(key, sizeof key,
                  "Test Using Larger Than Block-Size Key - Hash Key First", 54,
                  d);
  hex(d, got);
  ASSERT_STREQ(
    got, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

int main(void) {
  static const check_test tests[] = {
    CHECK(test_buf),       CHECK(test_scalars), CHECK(test_strings),
    CHECK(test_slices),    CHECK(test_tables),  CHECK(test_functions),
    CHECK(test_names),     CHECK(test_errors),  CHECK(test_objects),
    CHECK(test_hostile),   CHECK(test_bytecode), CHECK(test_equal),
    CHECK(test_sha256),    CHECK(test_counted_killed),
  };
  int rc;
  if (lmp_arena_init(64 << 20) != 0) {
    fprintf(stderr, "cannot make the arena\n");
    return 2;
  }
  S = newstate();
  R = newstate();
  rc = check_run(tests, CHECK_COUNT(tests));
  lua_close(S);
  lua_close(R);
  return rc;
}
