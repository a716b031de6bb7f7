/* core.c -- the luamp module: opens the runtime, builds the `luamp.core`
 * table of C mechanism from the families of src/types, and hands it to the
 * Lua front (lua/luamp/), which is compiled into the binary and offered to
 * `require` through package.preload.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luamp.h"
#include "luamp_lua.h" /* generated: lmp_lua_files[] */
#include "broker/broker.h"
#include "types/types.h"

static int never(void *ud) {
  (void)ud;
  return 0;
}

/* sleep(seconds): sleeps while the process's own luamp work goes on. */
static int core_sleep(lua_State *L) {
  lua_Number t = luaL_checknumber(L, 1);
  int rc;
  luaL_argcheck(L, t == t, 1, "seconds must be a number, not NaN");
  luaL_argcheck(L, t >= 0, 1, "seconds must be non-negative");
  rc = lmp_wait(L, never, NULL, t >= 1e15 ? -1 : lmp_now() + t);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot sleep");
  return 0;
}

/* flush(): every output stream of this process, as at its exit. */
static int core_flush(lua_State *L) {
  (void)L;
  fflush(NULL);
  return 0;
}

/* isatty(fd) -> whether the descriptor is a terminal. */
static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int core_monotonic(lua_State *L) {
  lua_pushnumber(L, lmp_now());
  return 1;
}

static int core_stats(lua_State *L) {
  lmp_arena_stats st;
  lmp_reap_children();
  lmp_arena_stats_get(&st);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)st.size);
  lua_setfield(L, -2, "arena_size");
  lua_pushinteger(L, (lua_Integer)st.used);
  lua_setfield(L, -2, "arena_used");
  lua_pushinteger(L, (lua_Integer)st.reserved);
  lua_setfield(L, -2, "arena_reserved");
  lua_pushinteger(L, (lua_Integer)st.blocks);
  lua_setfield(L, -2, "arena_blocks");
  lua_pushinteger(L, (lua_Integer)st.objects);
  lua_setfield(L, -2, "objects");
  lua_pushinteger(L, (lua_Integer)st.processes);
  lua_setfield(L, -2, "processes");
  lua_pushinteger(L, lmp_live_children());
  lua_setfield(L, -2, "children");
  return 1;
}

static int core_interrupted(lua_State *L) {
  lua_pushboolean(L, lmp_was_interrupted());
  return 1;
}

static int core_is_interrupt(lua_State *L) {
  lua_pushboolean(L, lmp_is_interrupt(L, 1));
  return 1;
}

/* hold_interrupt(), release_interrupt(): a stretch that Ctrl-C does not
 * cut, its interrupt raised at the release (lmp_hold_interrupt). */
static int core_hold_interrupt(lua_State *L) {
  (void)L;
  lmp_hold_interrupt();
  return 0;
}

static int core_release_interrupt(lua_State *L) {
  (void)L;
  lmp_release_interrupt();
  return 0;
}

static int optholds(lua_State *L) {
  lua_Integer holds = luaL_optinteger(L, 1, 0);
  return holds > INT_MAX ? INT_MAX : (int)holds;
}

/* interrupt_due([holds]) -> whether a Ctrl-C waits, and no more than
 * `holds` holds (default 0) keep it back. */
static int core_interrupt_due(lua_State *L) {
  lua_pushboolean(L, lmp_interrupt_due(optholds(L)));
  return 1;
}

/* interrupt_point([holds]): raises KeyboardInterrupt if interrupt_due:
 * for code that defers the interrupt, at a place where it may stop. */
static int core_interrupt_point(lua_State *L) {
  if (lmp_interrupt_due(optholds(L))) return lmp_raise_interrupt(L);
  return 0;
}

/* interrupt_later(): the KeyboardInterrupt just caught comes again, at
 * the next Lua instruction that may raise it (lmp_interrupt_later). */
static int core_interrupt_later(lua_State *L) {
  (void)L;
  lmp_interrupt_later();
  return 0;
}

/* os.exit for luamp processes: a child leaves through its own exit path
 * (never the parent's atexit handlers); the main process first waits for
 * its children as at the end of a script. */
static int core_os_exit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1))
    status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  /* A child leaves as ever, its own children joined, whatever `close`
   * says: its state is a copy of its parent's, the parent's pending
   * to-be-closed variables and objects included, whose clean-up is the
   * parent's to run, as a Python child leaves by os._exit. */
  if (lmp_is_child()) lmp_exit_child(L, status);
  if (lmp_run_atexit(L) == -EINTR) status = 130;
  if (lua_toboolean(L, 2)) lua_close(L);
  exit(status);
}

static int gc_sentinel(lua_State *L) {
  (void)L;
  if (!lmp_is_child()) lmp_run_atexit(L);
  return 0;
}

/* service_soon(): the service runs at the next wait (lmp_service_soon). */
static int core_service_soon(lua_State *L) {
  (void)L;
  lmp_service_soon();
  return 0;
}

/* set_service(fn | nil): the Lua work to run while this process waits
 * (see loop.c). */
static int core_set_service(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lmp_set_service(L, 1);
  return 0;
}

/* watch(obj) / unwatch(obj): this process hears of every change to obj
 * (a queue's put), even while it waits for something else. */
static int core_watch(lua_State *L) {
  lmp_obj *o = lmp_toobj(L, 1);
  luaL_argexpected(L, o != NULL, 1, "luamp object");
  if (lmp_watch(o) < 0) return luaL_error(L, "too many watches at once");
  return 0;
}

static int core_unwatch(lua_State *L) {
  lmp_obj *o = lmp_toobj(L, 1);
  if (o != NULL) lmp_unwatch(o);
  return 0;
}

/* newtable(narr, nhash) -> a table with room for narr array items and
 * nhash fields, so that filling a large one does not rehash it. */
static int core_newtable(lua_State *L) {
  lua_Integer narr = luaL_checkinteger(L, 1), nhash = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, narr >= 0 && narr <= INT_MAX, 1, "out of range");
  luaL_argcheck(L, nhash >= 0 && nhash <= INT_MAX, 2, "out of range");
  lua_createtable(L, (int)narr, (int)nhash);
  return 1;
}

/* metatable(name) -> the metatable registered under name, or nil. */
static int core_metatable(lua_State *L) {
  luaL_getmetatable(L, luaL_checkstring(L, 1));
  return 1;
}

/* interrupt_on_sigterm(): SIGTERM raises KeyboardInterrupt as Ctrl-C does
 * (for `luamp worker`'s clean stop). */
static int core_interrupt_on_sigterm(lua_State *L) {
  (void)L;
  lmp_sigterm_interrupts();
  return 0;
}

static const luaL_Reg core_funcs[] = {
  {"metatable", core_metatable},
  {"newtable", core_newtable},
  {"watch", core_watch},
  {"unwatch", core_unwatch},
  {"set_service", core_set_service}, {"service_soon", core_service_soon},
  {"sleep", core_sleep},
  {"monotonic", core_monotonic},
  {"isatty", core_isatty},
  {"flush", core_flush},
  {"stats", core_stats},
  {"interrupted", core_interrupted},
  {"interrupt_on_sigterm", core_interrupt_on_sigterm},
  {"is_interrupt", core_is_interrupt},
  {"hold_interrupt", core_hold_interrupt},
  {"release_interrupt", core_release_interrupt},
  {"interrupt_due", core_interrupt_due},
  {"interrupt_point", core_interrupt_point},
  {"interrupt_later", core_interrupt_later},
  {NULL, NULL}
};

#define FAMILY(name) &lmp_##name##_family,
static const lmp_family *const families[] = {
  &lmp_process_family, &lmp_codec_family, LMP_FAMILIES(FAMILY)
  &lmp_wire_family, &lmp_redis_family, NULL
};
#undef FAMILY

/* Pushes the luamp.core table. */
static int open_core(lua_State *L) {
  int i;
  lmp_error_open(L);
  luaL_newlib(L, core_funcs);
  for (i = 0; families[i] != NULL; i++) lmp_family_open(L, families[i]);
  lua_pushinteger(L, LMP_MAX_PROCS);
  lua_setfield(L, -2, "max_processes");
  return 1;
}

/* The Lua front, one preload function per file. */
static int load_embedded(lua_State *L) {
  const lmp_lua_file *f = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, f->src, f->len, f->chunkname) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1); /* module name */
  lua_call(L, 1, 1);
  return 1;
}

static void preload_front(lua_State *L) {
  const lmp_lua_file *f;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (f = lmp_lua_files; f->name != NULL; f++) {
    lua_pushlightuserdata(L, (void *)f);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, f->name);
  }
  lua_pop(L, 1);
}

/* A stock lua5.4's allocator, wrapped so that a block that grows into
 * fresh pages has them faulted in at once, as the host's allocator does
 * (host.c).  The first allocator wrapped is the only one: a state with
 * another keeps its own as it is. */
static struct {
  lua_Alloc f;
  void *ud;
} stock;

static void *stock_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  /* (For a new block, osize is the kind of object.) */
  return lmp_realloc_fresh(stock.f, ud, ptr, osize, ptr == NULL ? 0 : osize,
                           nsize);
}

static void wrap_stock_alloc(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f == stock_alloc) return;
  if (stock.f == NULL) {
    stock.f = f;
    stock.ud = ud;
  }
  if (f == stock.f && ud == stock.ud) lua_setallocf(L, stock_alloc, ud);
}

/* Replaces os.exit in the state's os table, if it has one. */
static void patch_os_exit(lua_State *L) {
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, core_os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
}

LUAMP_EXPORT int luaopen_luamp(lua_State *L) {
  int rc = lmp_arena_init(0);
  if (rc == -EINVAL)
    return luaL_error(L, "bad LUAMP_ARENA '%s' (expected a size such as "
                      "256M or 4G)", getenv("LUAMP_ARENA"));
  if (rc < 0)
    return luaL_error(L, "cannot reserve the shared arena: %s "
                      "(set LUAMP_ARENA to a smaller size)", strerror(-rc));
  if ((rc = lmp_runtime_init(NULL)) < 0)
    return luaL_error(L, "cannot start the event loop: error %d", rc);
  lmp_sigint_install(L);
  /* A Pool's bookkeeping, in its owner and its workers, is not cut by
   * Ctrl-C: the interrupt comes once it returns to the caller's code, or
   * runs a callback or an input function, or waits.  luamp's other
   * modules that it calls are its own code there. */
  lmp_interrupt_defer_in("@luamp/pool", "@luamp/");
  luaL_requiref(L, "luamp.core", open_core, 0);
  lua_pop(L, 1);
  preload_front(L);
  patch_os_exit(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, LMP_HOSTED) == LUA_TNIL) {
    /* A stock lua5.4.  Our os.exit may close the state, which unloads
     * this module while its code is still on the stack: stay loaded. */
    Dl_info info;
    if (dladdr((void *)luaopen_luamp, &info) && info.dli_fname != NULL)
      dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    /* And wait for children when the state closes. */
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, gc_sentinel);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "luamp.sentinel");
    wrap_stock_alloc(L);
  }
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luamp.init");
  lua_call(L, 1, 1);
  return 1;
}
