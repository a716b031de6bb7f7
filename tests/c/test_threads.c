/* test_threads.c -- an application with threads that embeds the host, as
 * a server or a GUI would: four threads take the application's mutex and
 * allocate in a loop while the main thread starts processes.
 *
 * A fork copies only the thread that calls it: a mutex another thread held
 * at that instant stays locked in the child for good.  With "fork" the
 * children find the mutex held (the hazard is shown, with a bounded wait);
 * with "spawn" each child is a fresh run of this program, which hands
 * control to luamp_child_main before anything else, registers the
 * application's functions there, and finds the mutex free; with
 * "forkserver" each is a fork of such a run, single-threaded: 200
 * Processes and a Pool's map run and exit, every time, by either. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include <luamp.h>

#include "check.h"

static pthread_mutex_t app_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_int stop;

/* app.locked(timeout) -> whether the application's mutex could be taken
 * within timeout seconds (it is given back at once). */
static int app_locked(lua_State *L) {
  double t = luaL_checknumber(L, 1);
  struct timespec ts;
  int rc;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)t;
  ts.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  rc = pthread_mutex_timedlock(&app_mutex, &ts);
  if (rc == 0) pthread_mutex_unlock(&app_mutex);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* app.threads() -> the threads of this process (/proc/self/status). */
static int app_threads(lua_State *L) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "Threads: %d", &n) == 1) break;
  if (f != NULL) fclose(f);
  lua_pushinteger(L, n);
  return 1;
}

/* The application's library, in the host and in every spawned child. */
static void open_app(lua_State *L) {
  static const luaL_Reg app[] = {
    {"locked", app_locked}, {"threads", app_threads}, {NULL, NULL}};
  luaL_newlib(L, app);
  lua_setglobal(L, "app");
}

/* A thread of the application: the mutex held almost all the time, with
 * allocations inside it. */
static void *busy(void *arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    void *p[8];
    int i;
    pthread_mutex_lock(&app_mutex);
    for (i = 0; i < 8; i++) p[i] = malloc(64 + (size_t)i * 512);
    for (i = 0; i < 8; i++) free(p[i]);
    pthread_mutex_unlock(&app_mutex);
  }
  return NULL;
}

static luamp_host *host;

/* Runs a chunk in the host; it returns a number, or fails the test. */
static lua_Integer run(const char *code) {
  lua_State *L = luamp_state(host);
  lua_Integer n = -1;
  if (luaL_loadstring(L, code) != LUA_OK || luamp_pcall(host, 0, 1)) {
    CHECK_FAIL("%s", lua_tostring(L, -1));
  } else {
    n = lua_tointeger(L, -1);
  }
  lua_settop(L, 0);
  return n;
}

/* 40 forked children each wait 0.3 s for the mutex: with four threads
 * holding it nearly always, some find it held for good. */
static void test_fork_hazard(void) {
  lua_Integer wedged = run(
    "local mp = require 'luamp'\n"
    "local ps, wedged = {}, 0\n"
    "for i = 1, 40 do\n"
    "  ps[i] = mp.Process{target = function()\n"
    "    os.exit(app.locked(0.3) and 0 or 3)\n"
    "  end}\n"
    "  ps[i]:start()\n"
    "end\n"
    "for _, p in ipairs(ps) do\n"
    "  p:join(30)\n"
    "  if p.exitcode == 3 then wedged = wedged + 1 end\n"
    "end\n"
    "return wedged\n");
  printf("# fork: %d of 40 children found the mutex held for good\n",
         (int)wedged);
  ASSERT_TRUE(wedged > 0);
}

/* Waves of twenty children: 10, or 3 in a short pass (the sanitizers',
 * which sets LUAMP_SPEC_SHORT as it does for the specs). */
static int waves(void) {
  const char *s = getenv("LUAMP_SPEC_SHORT");
  return s != NULL && *s != '\0' ? 3 : 10;
}

/* 200 children started by `method`, twenty at a time, each takes the
 * mutex, has one thread and calls the application's function; then a
 * Pool of that method maps. */
static void runs_every_child(const char *method) {
  char code[1024];
  lua_Integer ok;
  snprintf(code, sizeof code,
    "local mp = require 'luamp'\n"
    "local ctx = mp.get_context('%s')\n"
    "local good = 0\n"
    "for wave = 1, %d do\n"
    "  local ps = {}\n"
    "  for i = 1, 20 do\n"
    "    ps[i] = ctx.Process{target = function()\n"
    "      os.exit(app.locked(5) and app.threads() == 1 and 0 or 3)\n"
    "    end}\n"
    "    ps[i]:start()\n"
    "  end\n"
    "  for _, p in ipairs(ps) do\n"
    "    p:join(60)\n"
    "    if p.exitcode == 0 then good = good + 1 end\n"
    "  end\n"
    "end\n"
    "return good\n", method, waves());
  ok = run(code);
  ASSERT_EQ((int)ok, 20 * waves());
  snprintf(code, sizeof code,
    "local mp = require 'luamp'\n"
    "local pool = mp.get_context('%s').Pool(2)\n"
    "local xs = {}\n"
    "for i = 1, 50 do xs[i] = i end\n"
    "local r = pool:map(function(x)\n"
    "  return app.locked(5) and x * 2 or -1\n"
    "end, xs)\n"
    "pool:close()\n"
    "pool:join()\n"
    "local sum = 0\n"
    "for _, v in ipairs(r) do sum = sum + v end\n"
    "return sum\n", method);
  ok = run(code);
  ASSERT_EQ((int)ok, 2550);
}

static void test_spawn_runs_every_child(void) { runs_every_child("spawn"); }

static void test_forkserver_runs_every_child(void) {
  runs_every_child("forkserver");
}

/* luamp_config.start_method is the default of the host it makes. */
static void test_config_start_method(void) {
  ASSERT_EQ((int)run("return require('luamp').get_start_method() == "
                     "'forkserver' and 1 or 0"), 1);
  ASSERT_EQ((int)run(
    "local mp = require 'luamp'\n"
    "local p = mp.Process{target = function()\n"
    "  os.exit(app.locked(5) and app.threads() == 1 and 0 or 3)\n"
    "end}\n"
    "p:start()\n"
    "p:join(60)\n"
    "return p.exitcode\n"), 0);
}

int main(int argc, char **argv) {
  static const check_test tests[] = {
    CHECK(test_fork_hazard), CHECK(test_spawn_runs_every_child),
    CHECK(test_forkserver_runs_every_child)};
  static const check_test configured[] = {CHECK(test_config_start_method)};
  luamp_config cfg = {0};
  pthread_t th[4];
  const char *err;
  int i, rc;

  luamp_child_main(argc, argv, open_app); /* a spawned child ends here */
  cfg.arena_size = 64u << 20;
  if ((host = luamp_new(&cfg, &err)) == NULL) {
    fprintf(stderr, "test_threads: %s\n", err);
    return 1;
  }
  open_app(luamp_state(host));
  for (i = 0; i < 4; i++) pthread_create(&th[i], NULL, busy, NULL);
  rc = check_run(tests, CHECK_COUNT(tests));
  luamp_close(host);
  /* A host made to start by the forkserver; and a name it cannot take. */
  cfg.start_method = "forkserver";
  if ((host = luamp_new(&cfg, &err)) == NULL) {
    fprintf(stderr, "test_threads: %s\n", err);
    return 1;
  }
  open_app(luamp_state(host));
  rc |= check_run(configured, CHECK_COUNT(configured));
  luamp_close(host);
  cfg.start_method = "vfork";
  host = luamp_new(&cfg, &err);
  if (host != NULL || strstr(err, "cannot find context for \"vfork\"") ==
      NULL) {
    fprintf(stderr, "not ok - a bad start_method: %s\n",
            host ? "accepted" : err);
    rc = 1;
  }
  atomic_store(&stop, 1);
  for (i = 0; i < 4; i++) pthread_join(th[i], NULL);
  return rc;
}
