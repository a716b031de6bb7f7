/* luamp.h -- public API of libluamp: a Lua 5.4 host whose workers are forks.
 *
 * An application embeds luamp by creating a host, reaching its lua_State,
 * running code in it and closing it.  Every luamp process of the family
 * (the host and all the processes it forks, transitively) shares one arena
 * of shared memory, made when the first host or module starts.
 */
#ifndef LUAMP_H
#define LUAMP_H

#include <stddef.h>

#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LUAMP_BUILDING)
#define LUAMP_EXPORT __attribute__((visibility("default")))
#else
#define LUAMP_EXPORT
#endif

#define LUAMP_VERSION_MAJOR 0
#define LUAMP_VERSION_MINOR 1
#define LUAMP_VERSION_PATCH 0
#define LUAMP_VERSION "0.1.0"

/* Options for luamp_new.  Zero-initialise and set what you need. */
typedef struct luamp_config {
  /* Bytes of shared arena to reserve; 0 means $LUAMP_ARENA or the default
   * (1 GiB).  The reservation is virtual: pages are touched lazily.  Only
   * the first host or module of a process sets it. */
  size_t arena_size;
  /* A libuv loop (uv_loop_t *) the host should use instead of making its
   * own; NULL for the host's own.  The caller keeps ownership.  The hosts
   * alive at once share the first one's loop; once the last is closed,
   * its handles on the loop are closed too (run the loop once, e.g.
   * uv_run(loop, UV_RUN_NOWAIT), before uv_loop_close), and the next host
   * takes the loop it is given. */
  void *loop;
  /* Leave the standard libraries out of the new state: the caller opens
   * what it wants (luamp's own Lua needs base, package, coroutine, table,
   * io, os, string, math and debug), then `require "luamp"` loads it, from
   * package.preload.  0 opens them all, and luamp.  start_method must then
   * be NULL. */
  int no_stdlibs;
  /* How this host starts processes: "fork", "spawn" or "forkserver"
   * (mp.set_start_method's names); NULL means $LUAMP_START_METHOD or
   * "fork".  An application with threads of its own wants "forkserver"
   * or "spawn", and then must call luamp_child_main first in main. */
  const char *start_method;
} luamp_config;

typedef struct luamp_host luamp_host;

/* Creates a host: a fresh lua_State with the standard libraries and the
 * luamp module loaded (global `luamp` is not set; scripts `require` it).
 * Returns NULL on failure with a message in *err (static storage) when err
 * is not NULL. */
LUAMP_EXPORT luamp_host *luamp_new(const luamp_config *cfg, const char **err);

/* The host's Lua state.  Register C functions here before forking: every
 * worker is a fork of this process and can call them. */
LUAMP_EXPORT lua_State *luamp_state(luamp_host *h);

/* Runs a file (NULL for stdin) or a string under a traceback handler.
 * Returns LUA_OK, or an error status with the message and traceback on the
 * top of the stack (the caller pops it).  The chunk's results are
 * discarded. */
LUAMP_EXPORT int luamp_dofile(luamp_host *h, const char *path);
LUAMP_EXPORT int luamp_dostring(luamp_host *h, const char *code,
                                const char *chunkname);

/* lua_pcall in the host's state under the same handler: calls the
 * function below the narg arguments on the top of the stack.  Returns
 * LUA_OK with nres results, or an error status with the message (a
 * traceback for a string error, tostring for an error object). */
LUAMP_EXPORT int luamp_pcall(luamp_host *h, int narg, int nres);

/* 1 if the last of luamp_dofile, luamp_dostring and luamp_pcall on the
 * host failed because Ctrl-C interrupted it, else 0. */
LUAMP_EXPORT int luamp_interrupted(luamp_host *h);

/* Ends the host: terminates daemon children, joins the others (or, if
 * Ctrl-C ended its last chunk, ends every child at once), closes the
 * state and frees the host.  Returns the number of children that had to be
 * terminated, or -1 when Ctrl-C interrupted the wait (every child has then
 * been ended).  Never raises.  A new host may be made afterwards. */
LUAMP_EXPORT int luamp_close(luamp_host *h);

/* Parses a size such as "64M", "1G", "512k" or "1048576" into bytes, as
 * --arena and LUAMP_ARENA read it: 0, or -1 when it is malformed. */
LUAMP_EXPORT int luamp_parse_size(const char *s, size_t *out);

/* Call first in main(), before anything else, with main's arguments: if
 * this process is a child that luamp started with the "spawn" start method,
 * or the server of the "forkserver" method (its arguments say so), runs
 * that child or server and exits; otherwise returns 0 at once.  Either is
 * a fresh run of the parent's executable, so an application that embeds
 * the host and uses "spawn" or "forkserver" must call this (as a Python
 * program calls freeze_support()); the C functions it registers are then
 * its to register again in `open`, called with the new state before any
 * other code runs in it (NULL: none).  A forkserver's children are forks
 * of the server's state and have what `open` registered there. */
LUAMP_EXPORT int luamp_child_main(int argc, char **argv,
                                  void (*open)(lua_State *L));

/* The module opener, for `require "luamp"` from a stock lua5.4. */
LUAMP_EXPORT int luaopen_luamp(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
