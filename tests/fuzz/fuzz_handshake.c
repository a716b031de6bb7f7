/* fuzz_handshake.c -- libFuzzer target for what a Listener's accept and a
 * Client read from a peer they do not know yet: the authkey's challenge
 * and answer, the family proof, the channel's offset, and the frames that
 * follow, each received with recv until the stream ends.  Whatever the
 * peer sends, they must raise a luamp error or go on, never crash, leak,
 * hang or lose an arena block.
 *
 * An input is one byte of options and the bytes the peer sends, after
 * which the peer stops writing:
 *   bit 0   0: the peer connects and a Listener accepts;
 *           1: a Client connects and the peer accepts
 *   bit 1   with an authkey ("fuzz key") on luamp's side
 * This build's challenges and nonces are fixed (see listener.c), and so is
 * the arena's key, so a transcript written once answers them: run with
 * LUAMP_FUZZ_SEEDS=dir to write transcripts of whole conversations (each
 * role, with and without a key, of the family or not) as a starting
 * corpus, and set LUAMP_FUZZ_VERBOSE to see each input's answer.
 *
 *   cmake -S . -B build-fuzz -DLUAMP_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_handshake
 *   LUAMP_FUZZ_SEEDS=corpus build-fuzz/fuzz_handshake
 *   build-fuzz/fuzz_handshake -max_total_time=60 corpus
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>

#include "luamp.h"
#include "types/types.h"

#define KEY "fuzz key"
#define MAX_SCRIPT 32768

static const uint8_t fixed_key[16] = "luamp fuzz key!";

static luamp_host *host;
static lua_State *L;
static int peer_listener = -1;            /* where a Client connects */
static struct sockaddr_un listen_at, peer_at; /* abstract names */
static socklen_t listen_len, peer_len;
static lmp_off seed_channel; /* a channel a family peer may name */
static int verbose;          /* $LUAMP_FUZZ_VERBOSE: print each answer */

/* luamp's side: run(connects, keyed) accepts from a Listener or connects
 * a Client, then receives until the stream ends.  A TimeoutError means it
 * waited for a peer that had stopped: a hang. */
static const char side[] =
  "local mp = require 'luamp'\n"
  "local listen_at, peer_at, key = ...\n"
  "local listeners = {[false] = mp.Listener(listen_at),\n"
  "                   [true] = mp.Listener(listen_at .. '+', {authkey = key})}\n"
  "return function(connects, keyed)\n"
  "  local c\n"
  "  if connects then\n"
  "    c = mp.Client(peer_at, {authkey = keyed and key or nil, timeout = 20})\n"
  "  else\n"
  "    c = listeners[keyed]:accept(20)\n"
  "  end\n"
  "  local ok, err = pcall(function()\n"
  "    while true do c:recv() end\n"
  "  end)\n"
  "  c:close()\n"
  "  error(err, 0)\n"
  "end\n";

/* Lua's allocations through the host's allocator, each refused beyond a
 * cap: an authenticated peer's bytecode may ask the loader for any size,
 * which a real process refuses with "not enough memory" and the sanitizer
 * would report as a finding. */
#define ALLOC_CAP ((size_t)256 << 20)
static lua_Alloc host_alloc;
static void *host_ud;

static void *capped_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize > ALLOC_CAP) return NULL;
  return host_alloc(host_ud, p, osize, nsize);
}

static void abstract(struct sockaddr_un *a, socklen_t *len, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "%s", name);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                     strlen(name));
}

static void writeall(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* luamp's side has gone: fine */
    c += w;
    n -= (size_t)w;
  }
}

static void drain(int fd) {
  char sink[4096];
  while (read(fd, sink, sizeof sink) > 0) {
  }
}

typedef struct {
  const uint8_t *data;
  size_t size;
} script;

/* The peer that accepts a Client: sends its script, stops writing, reads
 * until luamp's side closes. */
static void *peer_accepts(void *arg) {
  script *s = arg;
  int fd = accept(peer_listener, NULL, NULL);
  if (fd < 0) return NULL;
  writeall(fd, s->data, s->size);
  shutdown(fd, SHUT_WR);
  drain(fd);
  close(fd);
  return NULL;
}

/* An error message without the chunk and line where it was raised. */
static const char *body(const char *err) {
  const char *p;
  if (strncmp(err, "[string ", 8) != 0 || (p = strstr(err, "]:")) == NULL)
    return err;
  for (p += 2; *p >= '0' && *p <= '9'; p++) {
  }
  return *p == ':' && p[1] == ' ' ? p + 2 : err;
}

/* Calls run(connects, keyed); a luamp error is an answer, anything else
 * (a Lua error of the binding's own, a timeout) a finding. */
static void converse(int connects, int keyed) {
  const char *err;
  lua_pushvalue(L, 1);
  lua_pushboolean(L, connects);
  lua_pushboolean(L, keyed);
  if (luamp_pcall(host, 2, 0) == LUA_OK) return;
  err = lua_tostring(L, -1);
  if (err == NULL) err = luaL_tolstring(L, -1, NULL);
  if (strncmp(err, "luamp.TimeoutError", 18) == 0 ||
      strncmp(body(err), "attempt to ", 11) == 0 ||
      strncmp(body(err), "bad argument ", 13) == 0) {
    fprintf(stderr, "unexpected error: %s\n", err);
    abort();
  }
  if (verbose) fprintf(stderr, "answer: %s\n", err);
  lua_settop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  script s;
  int connects, keyed;
  if (size < 1 || size > MAX_SCRIPT) return 0;
  connects = data[0] & 1;
  keyed = (data[0] >> 1) & 1;
  s.data = data + 1;
  s.size = size - 1;
  if (connects) {
    pthread_t t;
    if (pthread_create(&t, NULL, peer_accepts, &s) != 0) abort();
    converse(1, keyed);
    pthread_join(t, NULL);
  } else {
    /* A Unix socket's connect completes in the backlog, and its buffer
     * takes the whole script: no thread needed. */
    struct sockaddr_un a = listen_at;
    socklen_t alen = listen_len;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (keyed) {
      a.sun_path[alen - offsetof(struct sockaddr_un, sun_path)] = '+';
      alen++;
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, alen) < 0) abort();
    writeall(fd, s.data, s.size);
    shutdown(fd, SHUT_WR);
    converse(0, keyed);
    close(fd);
  }
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}

/* ------------------------------------------------------------------ seeds */

typedef struct {
  uint8_t b[4096];
  size_t n;
} out;

static void put(out *o, const void *p, size_t n) {
  memcpy(o->b + o->n, p, n);
  o->n += n;
}

static void put_hmac(out *o, const void *key, size_t klen, const void *msg,
                     size_t n) {
  unsigned char d[LMP_SHA256_SIZE];
  lmp_hmac_sha256(key, klen, msg, n, d);
  put(o, d, sizeof d);
}

/* The frames of the values `code` returns, as a Pipe sends them. */
static void put_frames(out *o, const char *code) {
  int i, n;
  if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, LUA_MULTRET, 0))
    abort();
  n = lua_gettop(L) - 1;
  for (i = 0; i < n; i++) {
    lmp_buf *b = lmp_buf_new(L);
    uint32_t len;
    unsigned char h[4];
    lmp_encode(L, 2 + i, "seed", b);
    len = (uint32_t)b->len;
    h[0] = len >> 24, h[1] = len >> 16, h[2] = len >> 8, h[3] = len;
    put(o, h, 4);
    put(o, b->data, b->len);
    lmp_msg_release(b->data, b->len);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
}

/* The peer's half of an authkey's handshake, in the order luamp's side
 * reads it; an answer is framed as a message. */
static void put_auth(out *o, int connects) {
  unsigned char z[32], hello[36] = "LMPA", len[4] = {0, 0, 0, 32};
  memset(z, 'z', sizeof z);
  memset(hello + 4, 'c', 32);
  if (connects) { /* luamp answers first */
    put(o, hello, sizeof hello);
    put(o, "\1", 1);
    put(o, len, sizeof len);
    put_hmac(o, KEY, strlen(KEY), z, sizeof z);
  } else {
    put(o, len, sizeof len);
    put_hmac(o, KEY, strlen(KEY), z, sizeof z);
    put(o, hello, sizeof hello);
    put(o, "\1", 1);
  }
}

/* The peer's half of the family proof: right (kin) or wrong. */
static void put_kin(out *o, int connects, int kin) {
  unsigned char hello[20] = "LMPK", msg[17];
  memset(hello + 4, 'n', 16);
  put(o, hello, sizeof hello);
  msg[0] = connects ? 's' : 'c';
  memset(msg + 1, 'z', 16);
  put_hmac(o, kin ? lmp_arena_key() : (const uint8_t *)"not the family!",
           16, msg, sizeof msg);
  if (!connects) {
    uint64_t off = seed_channel;
    put(o, &off, sizeof off);
  }
}

static void seed(const char *dir, int i, int connects, int keyed, int kin,
                 const char *values) {
  out o;
  char path[4096];
  FILE *f;
  o.n = 0;
  o.b[o.n++] = (uint8_t)(connects | keyed << 1);
  if (keyed) {
    put_auth(&o, connects);
    put_kin(&o, connects, kin);
  }
  put_frames(&o, values);
  snprintf(path, sizeof path, "%s/seed-%02d", dir, i);
  if ((f = fopen(path, "wb")) == NULL || fwrite(o.b, 1, o.n, f) != o.n ||
      fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

static void writeseeds(const char *dir) {
  static const char plain[] =
    "return 1, 'two', {3, x = {4.5, true}}, ('x'):rep(300)";
  static const char code[] =
    "local n = 0 return function() n = n + 1 return n end, {string.rep}";
  static const char object[] =
    "local mp = require 'luamp' return mp.Value('i', 7), 'after'";
  int i = 0, connects;
  for (connects = 0; connects <= 1; connects++) {
    seed(dir, i++, connects, 0, 0, plain);
    seed(dir, i++, connects, 0, 0, code);
    seed(dir, i++, connects, 1, 0, plain);
    seed(dir, i++, connects, 1, 0, code);
    seed(dir, i++, connects, 1, 1, plain);
    seed(dir, i++, connects, 1, 1, code);
    seed(dir, i++, connects, 1, 1, object);
  }
  printf("wrote %d seeds to %s\n", i, dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *dir = getenv("LUAMP_FUZZ_SEEDS");
  char name[64];
  const char *err = NULL;
  (void)argc;
  (void)argv;
  host = luamp_new(NULL, &err);
  if (host == NULL) {
    fprintf(stderr, "fuzz_handshake: %s\n", err);
    abort();
  }
  memcpy((uint8_t *)lmp_arena_key(), fixed_key, sizeof fixed_key);
  L = luamp_state(host);
  verbose = getenv("LUAMP_FUZZ_VERBOSE") != NULL;
  host_alloc = lua_getallocf(L, &host_ud);
  lua_setallocf(L, capped_alloc, NULL);
  seed_channel = lmp_channel_new();

  snprintf(name, sizeof name, "luamp-fuzz-%d", (int)getpid());
  abstract(&listen_at, &listen_len, name);
  snprintf(name, sizeof name, "luamp-fuzz-peer-%d", (int)getpid());
  abstract(&peer_at, &peer_len, name);
  peer_listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (peer_listener < 0 ||
      bind(peer_listener, (struct sockaddr *)&peer_at, peer_len) < 0 ||
      listen(peer_listener, 4) < 0)
    abort();

  if (luaL_loadstring(L, side) != LUA_OK) abort();
  lua_pushlstring(L, listen_at.sun_path,
                  listen_len - offsetof(struct sockaddr_un, sun_path));
  lua_pushlstring(L, peer_at.sun_path,
                  peer_len - offsetof(struct sockaddr_un, sun_path));
  lua_pushliteral(L, KEY);
  if (luamp_pcall(host, 3, 1) != LUA_OK) {
    fprintf(stderr, "fuzz_handshake: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (dir != NULL) {
    writeseeds(dir);
    exit(0);
  }
  return 0;
}
