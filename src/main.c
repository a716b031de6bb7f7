/* main.c -- the `luamp` command: lua(1)'s interface over a luamp host.
 *
 *   luamp [options] [script [args]]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "luamp.h"

static const char *progname = "luamp";
static luamp_host *host;

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat       execute string 'stat'\n"
          "  -i            enter interactive mode after executing 'script'\n"
          "  -l mod        require library 'mod' into global 'mod'\n"
          "  -l g=mod      require library 'mod' into global 'g'\n"
          "  -v            show version information\n"
          "  -E            ignore environment variables (LUA_INIT)\n"
          "  -W            turn warnings on\n"
          "  --arena SIZE  size of the shared arena (e.g. 256M, 4G)\n"
          "  -h, --help    show this help and exit\n"
          "  --            stop handling options\n"
          "  -             stop handling options and execute stdin\n",
          progname);
}

static void print_version(void) {
  printf("luamp %s (%s)\n", LUAMP_VERSION, LUA_RELEASE);
  fflush(stdout);
}

/* Prints an error message, one line for load errors, a traceback else. */
static void report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    fprintf(stderr, "%s: %s\n", progname, msg);
    fflush(stderr);
    lua_pop(L, 1);
  }
}

/* Builds the global `arg` as lua.c does: script at 0, options below. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i, narg;
  if (script == argc) script = 0; /* no script: arg[0] is the command */
  narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = luamp_pcall(host, 0, 0);
  report(L, status);
  return status;
}

static int dolibrary(lua_State *L, char *globname) {
  int status;
  char *suffix, *modname = strchr(globname, '=');
  if (modname == NULL) {
    modname = globname;
    suffix = strchr(modname, '-'); /* as lua.c: 'a-b' is loaded as 'b' */
    if (suffix != NULL) *suffix = '\0';
  } else {
    *modname = '\0';
    modname++;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  status = luamp_pcall(host, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, globname);
  report(L, status);
  return status;
}

static int handle_script(lua_State *L, char **argv) {
  int status;
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = luamp_pcall(host, n, LUA_MULTRET);
  }
  report(L, status);
  return status;
}

/* ------------------------------------------------------------ the REPL */

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    if (lmsg >= 5 && strcmp(msg + lmsg - 5, "<eof>") == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

static int readline_(char *buf, size_t n, const char *prompt) {
  fputs(prompt, stdout);
  fflush(stdout);
  return fgets(buf, (int)n, stdin) != NULL;
}

/* Reads a statement (or an expression, tried first as "return <line>"),
 * with continuation lines while it is incomplete; 0 at end of input. */
static int loadline(lua_State *L) {
  char buf[4096];
  size_t len;
  int status;
  lua_settop(L, 0);
  if (!readline_(buf, sizeof buf, "> ")) return -1;
  len = strlen(buf);
  if (len > 0 && buf[len - 1] == '\n') buf[--len] = '\0';
  lua_pushlstring(L, buf, len);
  {
    const char *ret = lua_pushfstring(L, "return %s", buf);
    status = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");
    if (status == LUA_OK) {
      lua_remove(L, -2); /* the "return" string */
      lua_remove(L, 1);  /* the line */
      return LUA_OK;
    }
    lua_pop(L, 2);
  }
  for (;;) {
    size_t l;
    const char *line = lua_tolstring(L, 1, &l);
    status = luaL_loadbuffer(L, line, l, "=stdin");
    if (!incomplete(L, status)) break;
    if (!readline_(buf, sizeof buf, ">> ")) break;
    len = strlen(buf);
    if (len > 0 && buf[len - 1] == '\n') buf[--len] = '\0';
    lua_pushliteral(L, "\n");
    lua_pushlstring(L, buf, len);
    lua_concat(L, 3);
  }
  lua_remove(L, 1);
  return status;
}

static void doREPL(lua_State *L) {
  int status;
  while ((status = loadline(L)) != -1) {
    if (status == LUA_OK) status = luamp_pcall(host, 0, LUA_MULTRET);
    if (status == LUA_OK) {
      int n = lua_gettop(L);
      if (n > 0) {
        luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
        lua_getglobal(L, "print");
        lua_insert(L, 1);
        if (lua_pcall(L, n, 0, 0) != LUA_OK) report(L, LUA_ERRRUN);
      }
    } else {
      report(L, status);
    }
  }
  lua_settop(L, 0);
  fputs("\n", stdout);
  fflush(stdout);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  luamp_config cfg;
  luamp_host *h;
  lua_State *L;
  const char *err = NULL;
  int i, script = 0, interactive = 0, version = 0, noenv = 0, warn = 0;
  int status = LUA_OK, ncode = 0, exitcode;

  memset(&cfg, 0, sizeof cfg);
  if (argv[0] != NULL && argv[0][0] != '\0') progname = "luamp";
  /* First pass: options that shape the host, and where the script is. */
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') { script = i; break; }
    if (strcmp(a, "-") == 0) { script = i; break; }
    if (strcmp(a, "--") == 0) { if (i + 1 < argc) script = i + 1; break; }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "-i") == 0) {
      interactive = version = 1;
    } else if (strcmp(a, "-v") == 0) {
      version = 1;
    } else if (strcmp(a, "-E") == 0) {
      noenv = 1;
    } else if (strcmp(a, "-W") == 0) {
      warn = 1;
    } else if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
      if (++i >= argc) {
        fprintf(stderr, "%s: '%s' needs argument\n", progname, a);
        usage(stderr);
        return 1;
      }
      ncode++;
    } else if (strncmp(a, "-e", 2) == 0 || strncmp(a, "-l", 2) == 0) {
      ncode++;
    } else if (strcmp(a, "--arena") == 0 || strncmp(a, "--arena=", 8) == 0) {
      const char *v = a[7] == '=' ? a + 8 : (++i < argc ? argv[i] : NULL);
      if (v == NULL || luamp_parse_size(v, &cfg.arena_size) < 0) {
        fprintf(stderr, "%s: --arena needs a size such as 256M or 4G\n",
                progname);
        return 1;
      }
    } else {
      fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
      usage(stderr);
      return 1;
    }
  }
  if (noenv) unsetenv("LUAMP_ARENA");
  host = h = luamp_new(&cfg, &err);
  if (h == NULL) {
    fprintf(stderr, "%s: %s\n", progname, err);
    return 1;
  }
  L = luamp_state(h);
  if (warn) lua_warning(L, "@on", 0);
  createargtable(L, argv, argc, script ? script : argc);
  if (version) print_version();
  if (!noenv) {
    const char *init = getenv("LUA_INIT_5_4");
    if (init == NULL) init = getenv("LUA_INIT");
    if (init != NULL) {
      if (init[0] == '@') status = dochunk(L, luaL_loadfile(L, init + 1));
      else status = dochunk(L, luaL_loadbuffer(L, init, strlen(init),
                                               "=LUA_INIT"));
    }
  }
  /* Second pass: -e and -l in order. */
  for (i = 1; status == LUA_OK && i < (script ? script : argc); i++) {
    char *a = argv[i], *v;
    if (strcmp(a, "--arena") == 0) { i++; continue; }
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l')) continue;
    v = a[2] != '\0' ? a + 2 : argv[++i];
    if (a[1] == 'e')
      status = dochunk(L, luaL_loadbuffer(L, v, strlen(v), "=(command line)"));
    else
      status = dolibrary(L, v);
  }
  if (status == LUA_OK && script) status = handle_script(L, argv + script);
  if (status == LUA_OK && interactive) doREPL(L);
  else if (status == LUA_OK && !script && ncode == 0 && !version) {
    if (isatty(STDIN_FILENO)) {
      print_version();
      doREPL(L);
    } else {
      status = dochunk(L, luaL_loadfile(L, NULL));
    }
  }
  exitcode = status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
  /* Ctrl-C ended the script: every child goes now (luamp_close sees to
   * it), and the status says why, as a shell reports a job killed by
   * SIGINT. */
  if (status != LUA_OK && luamp_interrupted(h)) exitcode = 130;
  if (luamp_close(h) < 0) exitcode = 130;
  return exitcode;
}
