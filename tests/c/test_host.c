/* test_host.c -- the embedding API as an application uses it: a host that
 * runs a Pool and is closed, then a second host in the same process, whose
 * blocking calls, Pool and children must work as the first one's did. */
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>
#include <uv.h>

#include <luamp.h>

#include "check.h"

/* Runs code in h; it must return the string `want`. */
static void expect(luamp_host *h, const char *code, const char *want) {
  lua_State *L = luamp_state(h);
  int top = lua_gettop(L);
  if (luaL_loadstring(L, code) != LUA_OK || luamp_pcall(h, 0, 1) != LUA_OK)
    CHECK_FAIL("raised: %s", lua_tostring(L, -1));
  else if (lua_type(L, -1) != LUA_TSTRING)
    CHECK_FAIL("returned %s, not a string", luaL_typename(L, -1));
  else
    ASSERT_STREQ(lua_tostring(L, -1), want);
  lua_settop(L, top);
}

/* Blocking calls that wake up at least once before they return. */
static const char *waits =
    "local mp = require 'luamp'\n"
    "local q = mp.Queue()\n"
    "local ok, e = pcall(q.get, q, true, 0.05)\n"
    "mp.sleep(0.02)\n"
    "local p = mp.Process{target = function() q:put('from the child') end}\n"
    "p:start()\n"
    "local v = q:get(true, 5)\n"
    "p:join()\n"
    "return tostring(ok) .. ' ' .. e.type .. ' ' .. v .. ' ' .. p.exitcode";

static const char *pool =
    "local mp = require 'luamp'\n"
    "local pool <close> = mp.Pool(2)\n"
    "local r = pool:map(function(x) return x * x end, {1, 2, 3})\n"
    "local got = {}\n"
    "pool:apply_async(function() return 7 end, nil,\n"
    "                 function(v) got[#got + 1] = v end):wait(5)\n"
    "return table.concat(r, ' ') .. ' / ' .. table.concat(got, ' ')";

/* One host's life: the waits first, so that nothing of an earlier host's
 * Pool may reach them, then a Pool of its own. */
static void one_host(void) {
  luamp_config cfg;
  const char *err = NULL;
  luamp_host *h;
  memset(&cfg, 0, sizeof cfg);
  cfg.arena_size = 64u << 20;
  h = luamp_new(&cfg, &err);
  if (h == NULL) {
    CHECK_FAIL("luamp_new: %s", err);
    return;
  }
  expect(h, waits, "false Empty from the child 0");
  expect(h, pool, "1 4 9 / 7");
  expect(h, "return tostring(require('luamp').stats().children)", "0");
  ASSERT_EQ(luamp_interrupted(h), 0);
  ASSERT_EQ(luamp_close(h), 0);
}

/* A host made with no standard libraries: the application opens them,
 * then requires luamp, which works as in any host. */
static void test_no_stdlibs(void) {
  luamp_config cfg;
  const char *err = NULL;
  luamp_host *h;
  lua_State *L;
  memset(&cfg, 0, sizeof cfg);
  cfg.arena_size = 64u << 20;
  cfg.no_stdlibs = 1;
  cfg.start_method = "spawn";
  ASSERT_EQ(luamp_new(&cfg, &err) == NULL, 1);
  ASSERT_EQ(err != NULL && strstr(err, "no_stdlibs") != NULL, 1);
  cfg.start_method = NULL;
  h = luamp_new(&cfg, &err);
  if (h == NULL) {
    CHECK_FAIL("luamp_new: %s", err);
    return;
  }
  L = luamp_state(h);
  lua_getglobal(L, "string");
  ASSERT_EQ(lua_isnil(L, -1), 1); /* nothing opened */
  lua_pop(L, 1);
  luaL_openlibs(L);
  expect(h, waits, "false Empty from the child 0");
  ASSERT_EQ(luamp_close(h), 0);
}

static void count_open(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) (*(int *)arg)++;
}

/* Handles on loop not being closed. */
static int open_handles(uv_loop_t *loop) {
  int n = 0;
  uv_walk(loop, count_open, &n);
  return n;
}

/* A host on the application's loop a, closed; then one on its loop b:
 * each runs on the loop it was given, and once closed leaves the loop
 * free to close. */
static void test_hosts_on_lent_loops(void) {
  uv_loop_t a, b;
  luamp_config cfg;
  const char *err = NULL;
  luamp_host *h;
  memset(&cfg, 0, sizeof cfg);
  cfg.arena_size = 64u << 20;
  ASSERT_EQ(uv_loop_init(&a), 0);
  ASSERT_EQ(uv_loop_init(&b), 0);
  cfg.loop = &a;
  h = luamp_new(&cfg, &err);
  if (h == NULL) {
    CHECK_FAIL("luamp_new: %s", err);
    return;
  }
  ASSERT_EQ(open_handles(&a) > 0, 1);
  expect(h, waits, "false Empty from the child 0");
  ASSERT_EQ(luamp_close(h), 0);
  ASSERT_EQ(open_handles(&a), 0);
  uv_run(&a, UV_RUN_NOWAIT);
  ASSERT_EQ(uv_loop_close(&a), 0);
  cfg.loop = &b;
  h = luamp_new(&cfg, &err);
  if (h == NULL) {
    CHECK_FAIL("luamp_new: %s", err);
    return;
  }
  ASSERT_EQ(open_handles(&b) > 0, 1);
  expect(h, waits, "false Empty from the child 0");
  expect(h, pool, "1 4 9 / 7");
  ASSERT_EQ(luamp_close(h), 0);
  uv_run(&b, UV_RUN_NOWAIT);
  ASSERT_EQ(uv_loop_close(&b), 0);
}

static void test_first_host(void) { one_host(); }

static void test_second_host_after_the_first_closed(void) { one_host(); }

int main(void) {
  static const check_test tests[] = {
    CHECK(test_first_host), CHECK(test_second_host_after_the_first_closed),
    CHECK(test_no_stdlibs), CHECK(test_hosts_on_lent_loops)
  };
  return check_run(tests, CHECK_COUNT(tests));
}
