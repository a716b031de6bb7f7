/* codec.h -- the message codec: Lua values to messages and back, the one
 * place that decides what may cross a process boundary.  encode.c writes
 * messages, decode.c reads them back, walk.c finds the shared objects a
 * message names without Lua, equal.c compares two messages' values,
 * mac.c signs bytecode and bytecode.c checks a peer's, buf.c is the
 * buffer messages are built in, sha256.c hashes and signs a connection's
 * challenge.
 */
#ifndef LUAMP_CODEC_H
#define LUAMP_CODEC_H

#include "arena/arena.h"
#include "runtime/runtime.h"

/*
 * The message format
 * ==================
 *
 * A message is one version byte (VERSION) and one encoded value.  A value
 * is a tag byte and what the tag calls for.  Lengths and counts are
 * varints: 7 bits a byte, least significant group first, the high bit set
 * on every byte but the last.  The decoder also accepts padded varints
 * (0x83 0x80 0x00 is 3), which the encoder writes when it patches a count
 * in place.  Messages never leave one machine and one build, so floats and
 * MACs are in native byte order.
 *
 *   tag         what follows
 *   0x00        nil
 *   0x01, 0x02  false, true
 *   0x03        an integer as a zigzag varint (0, -1, 1, -2... -> 0, 1, 2,
 *               3...), so that small negatives are short
 *   0x04        a float: the 8 bytes of the double (-0.0, inf, NaN kept)
 *   0x05        a string: varint length, bytes (any bytes, NULs included)
 *   0x06        a table: varint narr, one byte nhash, narr values (keys
 *               1..narr), then key, value pairs, then 0x00 where a key
 *               would be (a key is never nil).  nhash is the number of
 *               pairs capped at 255: a hint to presize the table, no more
 *   0x07        a Lua function: varint nups, varint len, an 8-byte MAC,
 *               len bytes of lua_dump output (debug info kept, so
 *               tracebacks name lines), then nups upvalues, each a value
 *               or a join
 *   0x08        ref: varint k, the k-th table or function of this message
 *               (counted from 1 in the order their tags appear) met again;
 *               this is how cycles and shared references survive
 *   0x09        join, only in place of an upvalue: varint k, varint n.  The
 *               upvalue is upvalue n of function k, shared with it
 *               (lua_upvaluejoin) as it was in the sender
 *   0x0a        the globals: the sender's globals table, decoded as the
 *               receiver's.  A function's _ENV rebinds this way, as after
 *               a fork
 *   0x0b        a C function by name: varint length, module name, varint
 *               length, field name; package.loaded[module][field]
 *   0x0c        a module by name: varint length, name; package.loaded[name]
 *   0x0d        a luamp object: varint type, varint arena offset
 *   0x0e        only where a table's key would be: a table M follows,
 *               and the table gets M as metatable
 *   0x0f        a Connection, only in a message that starts a process
 *               (spawn, forkserver), whose descriptors come with it:
 *               varint k (the k-th descriptor, from 0), varint flags,
 *               varint type and varint offset of its channel (an object
 *               the message names; 0 0 for none)
 *   0x11        only where a table's key would be: varint length, a name;
 *               the table gets the metatable registered under that name
 *               (luaL_newmetatable) in the receiver, as in the sender
 *   0x12        a Message: varint count, varint length, a whole message
 *               (version byte and all); it decodes as a Message again,
 *               holding what it names, and the walker sees through it.
 *               The count says how many objects it names: with none, the
 *               walker and the Message made of it skip its bytes
 *   0x16, 0x17  a table or function (0x06, 0x07 with the keep bit 0x10)
 *               that a later ref or join names; the decoder keeps these,
 *               and only these, where refs can find them
 *   0x40..0x7f  a string of tag - 0x40 bytes (0..63), then the bytes
 *   0x80..0xff  the integer tag - 0x80 (0..127)
 *
 * Tables.  The array part of a table is the run of keys 1, 2, 3... that
 * lua_next yields first; the rest, holes and all, go as pairs.  A
 * metatable registered under its __name (luaL_newmetatable) goes by that
 * name (0x11), so that an error object is one of the receiver's; any
 * other goes as the table it is (0x0e), shared like any table: a class
 * (M.__index == M) whose objects reach their methods, an environment's
 * {__index = _G} that inherits from the receiver's globals, a __call
 * that makes a table callable.
 *
 * Sharing.  The encoder numbers tables and Lua functions as it first meets
 * them and remembers them, by lua_topointer, in a small C hash; meeting one
 * again writes a ref and sets the keep bit on its first tag.  Upvalues are
 * remembered by lua_upvalueid in the same hash, so that a second closure
 * over the same variable (or a recursive local function, whose upvalue is
 * itself) writes a join or a ref.
 *
 * Names.  C functions cannot be copied, so they travel as the name they
 * have in package.loaded: a reverse map, value -> encoded name, built from
 * package.loaded (each module, and the C functions among the fields of each
 * module table, modules other than _G first) and cached in the registry.
 * A C function missing from it makes the encoder rebuild the map once.
 * Tables are sent by name only when they are modules themselves (`local
 * str = string`): a table that is merely reachable from a module, a global
 * say, is data and is copied.  So is a module loaded after the map was last
 * built; the next miss on a C function picks it up.
 *
 * Objects.  Each object written gains a reference owned by the message,
 * taken once the whole message is written so that an error leaks none.
 * lmp_msg_release walks a message without Lua and drops them.
 *
 * What cannot be sent (coroutines, light and foreign userdata, a C function
 * with no name, nesting deeper than MAXDEPTH) raises "cannot send
 * <root><path>: <reason>".  The path reads as Lua would index: args[2].file,
 * value["a b"], value[true], value[<table>] for the value under a table
 * key, value[<key>] for the key itself, and value[1]<upvalue fh> for an
 * upvalue of the function at value[1].  It is built only on that error
 * path, from the keys still on the stack, and cut at MAXPATH bytes.
 *
 * Decoding untrusted bytes
 * ------------------------
 * The decoder assumes nothing about its input.  Every read is bounds
 * checked; a length or count larger than the bytes left is an error before
 * anything is allocated, and a claimed array presizes at most 2^20 slots;
 * nesting is capped at MAXDEPTH, as in the encoder; refs and joins must
 * name a kept table or Lua function already decoded, and a join an upvalue
 * it has; NaN keys are refused; object offsets must pass lmp_obj_check.
 * Loading crafted bytecode can crash Lua, so each function's bytecode
 * carries a MAC, SipHash-2-4 keyed with the family's secret
 * (lmp_arena_key), and the decoder loads only bytecode whose MAC matches,
 * in binary mode only.  Any failure raises "malformed message: <what>"; a
 * name this process cannot resolve raises "cannot receive ...".
 */

#define LMP_CODEC_VERSION 1
/* Nested tables and functions, as LUAI_MAXCCALLS. */
#define LMP_CODEC_MAXDEPTH 200

/* Stack room: each level of nesting holds at most LMP_CODEC_LEVELSTACK
 * slots (a key and a value, or a table, key and value), and any level may
 * push 8 more for a moment.  The first LMP_CODEC_PRESTACK levels are
 * reserved on entry, with the 5 slots the encoder keeps, so that small
 * messages check the stack once. */
#define LMP_CODEC_LEVELSTACK 3
#define LMP_CODEC_PRESTACK 16
#define LMP_CODEC_ENTRYSTACK (5 + 8 + LMP_CODEC_PRESTACK * LMP_CODEC_LEVELSTACK)

/* The tags. */
enum {
  LMP_TAG_NIL = 0x00, LMP_TAG_FALSE, LMP_TAG_TRUE, LMP_TAG_INT, LMP_TAG_FLOAT,
  LMP_TAG_STR, LMP_TAG_TABLE, LMP_TAG_FUNC, LMP_TAG_REF, LMP_TAG_JOIN,
  LMP_TAG_GLOBALS, LMP_TAG_NAME, LMP_TAG_MODULE, LMP_TAG_OBJ, LMP_TAG_META,
  LMP_TAG_CONN,
  LMP_TAG_KEEP = 0x10,     /* on TABLE or FUNC: a ref or join names it;
                            * on OBJ: the object comes again */
  LMP_TAG_METANAME = 0x11, /* a metatable by its registered name */
  LMP_TAG_MSG = 0x12,      /* an embedded message */
  LMP_TAG_SHORTSTR = 0x40, /* 0x40..0x7f */
  LMP_TAG_FIXINT = 0x80    /* 0x80..0xff */
};

/* For the readers that work without Lua (the walker, the comparer, an
 * outcome's head, a lone number): lmp_varint_read reads the varint at
 * *p, before end, and moves *p past it, returning 0, or -1 when it is cut
 * short or longer than 64 bits; lmp_unzigzag turns an integer tag's
 * varint back into the integer. */
static inline int lmp_varint_read(const unsigned char **p,
                                  const unsigned char *end, uint64_t *v) {
  const unsigned char *q = *p;
  uint64_t x = 0;
  int shift;
  for (shift = 0; shift < 64 && q < end; shift += 7) {
    x |= (uint64_t)(*q & 0x7f) << shift;
    if (!(*q++ & 0x80)) {
      *v = x;
      *p = q;
      return 0;
    }
  }
  return -1;
}

static inline lua_Integer lmp_unzigzag(uint64_t z) {
  return (lua_Integer)((z & 1) ? ~(z >> 1) : z >> 1);
}

/* Writes v as a varint at p (10 bytes at most); returns the byte after. */
static inline char *lmp_varint_put(char *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (char)(v | 0x80);
    v >>= 7;
  }
  *p++ = (char)v;
  return p;
}

/* ------------------------------------------------------------ buffers */

/* A growable byte buffer.  lmp_buf_new pushes it as a userdata whose __gc
 * and __close free the bytes, so that an error raised while encoding
 * leaks nothing. */
typedef struct lmp_buf {
  char *data;
  size_t len, cap;
  /* Of a buffer that many operations use in turn (a handle's): the C
   * frame of the one using it (0: none), and the next buffer of its chain,
   * for an operation that runs inside that one (see lmp_buf_claim). */
  uintptr_t claim;
  struct lmp_buf *next;
} lmp_buf;

lmp_buf *lmp_buf_new(lua_State *L);
int lmp_buf_reserve(lmp_buf *b, size_t extra); /* 0 or -ENOMEM */
void lmp_buf_free(lmp_buf *b); /* and the rest of its chain */

/* The frame of the calling function, for lmp_buf_claim. */
#define LMP_FRAME() __builtin_frame_address(0)

/* An empty buffer of b's chain for an operation that runs in the function
 * whose C frame is `frame` (LMP_FRAME() there), to be let go of with
 * lmp_buf_unclaim; raises when there is no memory.  Encoding and decoding
 * may run Lua (a finalizer the collector runs as they allocate), which
 * may use the same handle: a buffer whose operation is still under way,
 * its frame above this one on the C stack (which grows down), is passed
 * over for the next of the chain, made when first needed.  One whose
 * operation ended by an error, its claim left at this frame or below, is
 * taken over. */
lmp_buf *lmp_buf_claim(lua_State *L, lmp_buf *b, void *frame);
static inline void lmp_buf_unclaim(lmp_buf *b) { b->claim = 0; }

/* The handle of a shared object that encodes values into itself (a
 * queue, a dict, a list): a scratch buffer, kept in user value 1, that
 * lmp_bufhandle_bind (an lmp_class's `bind`) makes. */
typedef struct lmp_bufhandle {
  lmp_handle h;
  lmp_buf *buf;
} lmp_bufhandle;

void lmp_bufhandle_bind(lua_State *L, lmp_obj *o);

/* ------------------------------------------------------------ encoding */

/* Appends the encoding of the value at `idx` to b.  Raises
 * "cannot send <root><path>: <reason>" when the value (or anything it
 * reaches) cannot cross a process boundary; `root` names the value in that
 * message ("value", "args").  Each luamp object reached gains a reference
 * owned by the message (see lmp_msg_release); returns how many there
 * are, so that a carrier can mark a message that names none and take it
 * back without walking it. */
size_t lmp_encode(lua_State *L, int idx, const char *root, lmp_buf *b);

/* As lmp_encode, for a receiver outside the family (another machine, a
 * Client's peer): a shared object (or a Message naming one) raises
 * "cannot send <root><path>: <why>", why a format given the class's name
 * ("a local %s cannot cross to another machine"), so the message names
 * none and takes no references; returns 0.  Its functions are signed with
 * this family's key; the receiver re-signs them (lmp_msg_resign) once it
 * has authenticated the sender by other means. */
size_t lmp_encode_wire(lua_State *L, int idx, const char *root, lmp_buf *b,
                       const char *why);

/* As lmp_encode, but the message takes no references: returns how many
 * objects it names.  lmp_msg_retain_counted then takes them, counting each
 * in *count as it goes, once the message sits where a reaper can find it;
 * lmp_msg_unretain_counted drops them, last first, lowering *count before
 * each drop;
 * lmp_msg_release_counted drops the first `count` of them (a reaper). */
size_t lmp_encode_bare(lua_State *L, int idx, const char *root, lmp_buf *b);
/* The same two, raising at `where` as lmp_encode_pieces_at does. */
size_t lmp_encode_wire_at(lua_State *L, int idx, const char *root,
                          lmp_buf *b, const char *why, int where);
size_t lmp_encode_bare_at(lua_State *L, int idx, const char *root,
                          lmp_buf *b, int where);
/* As lmp_encode_bare for the value at idx, an item of a table under the
 * key at `key` (a container's batch, each item a message of its own): an
 * error names it as the whole table's root[key] would (root.key for a
 * name) and goes on with its path below. */
size_t lmp_encode_bare_item(lua_State *L, int idx, int key, const char *root,
                            lmp_buf *b);
void lmp_msg_retain_counted(const char *p, size_t n, _Atomic uint64_t *count);
void lmp_msg_unretain_counted(const char *p, size_t n,
                              _Atomic uint64_t *count);
void lmp_msg_release_counted(const char *p, size_t n, uint64_t count);

/* A counted message block: a message in an arena block of its own that
 * counts, in `refs`, the references it has taken, for a structure that
 * keeps messages (a queue's out-of-line message, a List's item, a
 * Barrier's action).  `magic` says the rest means what it says, so that
 * the reaper of a process killed while it made one releases exactly what
 * it took (lmp_cmsg_release).
 *   lmp_cmsg_alloc   a block for n bytes, pending `which` for o (NULL: the
 *                    arena is exhausted); copy the message into data, then
 *                    (lmp_cmsg_alloc_at: one that *where names, a word of
 *                    a batch, see lmp_alloc_at)
 *   lmp_cmsg_seal    marks it whole and takes the references of the nobj
 *                    objects it names;
 *   lmp_cmsg_drop    drops them and frees the block in the heap operation
 *                    that zeroes *clear, the word naming it (a dtor's);
 *   lmp_cmsg_release a type's `release` hook for such blocks. */
typedef struct lmp_cmsg {
  uint64_t magic;
  uint64_t len;
  _Atomic uint64_t refs;
  char data[];
} lmp_cmsg;

lmp_cmsg *lmp_cmsg_alloc(lmp_obj *o, size_t n, int which);
lmp_cmsg *lmp_cmsg_alloc_at(size_t n, lmp_off *where);
void lmp_cmsg_seal(lmp_cmsg *m, size_t nobj);
void lmp_cmsg_drop(lmp_cmsg *m, lmp_off *clear);
void lmp_cmsg_release(lmp_obj *o, lmp_off blk);

/* A message in pieces, for a carrier that copies it once to where it is
 * going: the encoder's bytes are in b, with a gap at each gaps[i] where the
 * string strs[i] (lens[i] bytes, at least LMP_PIECES_MIN) belongs; total
 * is the whole message's length.  lmp_encode_pieces encodes as
 * lmp_encode_bare (the message takes no references yet) and pushes one
 * value that keeps the strings alive: pop it once lmp_pieces_copy has
 * written the message out.  A message with no gap is b alone. */
#define LMP_PIECES_MIN ((size_t)16 << 10)
#define LMP_PIECES_MAX 16
typedef struct lmp_pieces {
  int n;
  size_t total;
  size_t gaps[LMP_PIECES_MAX];
  const char *strs[LMP_PIECES_MAX];
  size_t lens[LMP_PIECES_MAX];
} lmp_pieces;
size_t lmp_encode_pieces(lua_State *L, int idx, const char *root, lmp_buf *b,
                         lmp_pieces *pc);
/* The same; an error it raises (a value that cannot be sent, memory)
 * begins with the position that error(msg, where) would name if the Lua
 * function that called the running C function raised it (where = 0:
 * none), so a binding raises at its caller's caller's line, say, without
 * a protected call of its own. */
size_t lmp_encode_pieces_at(lua_State *L, int idx, const char *root,
                            lmp_buf *b, lmp_pieces *pc, int where);
/* The same for the array of the n values on the stack from index first,
 * as if they were a table {...} (nils kept, no field n), made without
 * the table. */
size_t lmp_encode_array_pieces(lua_State *L, int first, int n,
                               const char *root, lmp_buf *b,
                               lmp_pieces *pc);
void lmp_pieces_copy(const lmp_pieces *pc, const lmp_buf *b, char *dst);

/* One number as a whole message, for Dict.incr: lmp_msg_number returns
 * 1 (integer in *i), 2 (float in *f) or 0 (not just a number);
 * lmp_msg_put_number writes one into out (16 bytes) and returns its
 * length. */
int lmp_msg_number(const char *p, size_t n, lua_Integer *i, lua_Number *f);
size_t lmp_msg_put_number(char *out, int isint, lua_Integer i, lua_Number f);

/* Do the messages [p, p+n) and [q, q+m) hold equal values?  Without Lua
 * and never raising: numbers as Lua's == compares them (1 == 1.0, NaN
 * equal to nothing), strings by their bytes, shared objects by identity,
 * functions by their encoding, tables as maps whatever order their keys
 * were set in (table keys by the same equality), cycles and shared parts
 * included.  Identical bytes with no float among them are equal without
 * a walk; a message it cannot read is equal to nothing. */
int lmp_msg_equal(const char *p, size_t n, const char *q, size_t m);

/* ------------------------------------------------------------ decoding */

/* Decodes one value from [p, p+n) and pushes it.  The input is untrusted:
 * raises "malformed message: ..." on anything it cannot read, never
 * crashes.  Objects decoded get new handles held by this process; the
 * message keeps its own references. */
void lmp_decode(lua_State *L, const char *p, size_t n);
/* The same for a message from outside the process family: plain data
 * only (nil, booleans, numbers, strings and tables of them, cycles
 * included); a function, a name, a shared object, an embedded message or
 * a metatable raises "cannot receive ...". */
void lmp_decode_plain(lua_State *L, const char *p, size_t n);

/* The items of an array message from the (skip+1)-th on, decoded into the
 * table at idx from position `at` on (as decode_into, with the first
 * `skip` items read and dropped); returns how many it set.  Raises as
 * lmp_decode. */
lua_Integer lmp_decode_into(lua_State *L, const char *p, size_t n, int idx,
                            lua_Integer at, int skip);
/* The first k items of the array message [p, p+n), when they are all
 * integers, into v[0..k-1], read without Lua: returns the length of the
 * message's array part (its items 1, 2, 3... up to the first nil; the
 * rest travel as pairs), or -1 when the message is no such array (or
 * cannot be read).  Never raises. */
lua_Integer lmp_decode_head(const char *p, size_t n, lua_Integer *v, int k);

/* lmp_decode under lua_pcall: pushes the value (LUA_OK) or the error, and
 * returns the status, so a caller can free what holds the message either
 * way before it raises. */
int lmp_decode_protected(lua_State *L, const char *p, size_t n);
/* The same with lmp_decode_plain. */
int lmp_decode_plain_protected(lua_State *L, const char *p, size_t n);

/* Copy out, decode, let go: for a reader that copies the message [p, p+n)
 * out of a shared structure under its lock.  Before the unlock,
 * lmp_hold_copy holds the objects the copy names, if the message took any
 * references (`refs`, its counted block's), so that no writer frees one
 * before its new handle holds it: 0 (*held of them) or -ENOMEM, none held.
 * After it, lmp_held_decode pushes the value, drops those holds, and raises
 * the decoding error if there was one; lmp_held_decode_status returns it
 * instead (on the stack), for a caller with more to let go of first.  A
 * message that holds nothing is decoded without a protected call. */
int lmp_hold_copy(_Atomic uint64_t *refs, const char *p, size_t n,
                  size_t *held);
void lmp_held_decode(lua_State *L, const char *p, size_t n, size_t held);
int lmp_held_decode_status(lua_State *L, const char *p, size_t n,
                           size_t held);

/* Take out, decode, release: pushes the value of the message [p, p+n)
 * that this process has taken out of a shared object, then drops the
 * message's references (the counted ones in *count when count is not
 * NULL, else all of them) and frees blk, the block holding it, registered
 * as its LMP_PEND_OUT entry (or NULL: the bytes are a private copy), and
 * raises the decoding error if there was one.  So the objects the message
 * names stay alive until their new handles hold them. */
void lmp_take_decode(lua_State *L, const char *p, size_t n, void *blk,
                     _Atomic uint64_t *count);

/* ------------------------------------------------------------ messages */

/* Pushes a new Message: a copy of the message [p, p+n), holding for this
 * process every object it names (nobj: how many, or any non-zero number
 * when unknown; 0 takes no walk).  Raises when the arena is exhausted. */
void lmp_msg_push(lua_State *L, const char *p, size_t n, size_t nobj);
/* The same in two steps, for a maker that writes the bytes in place (a
 * message in pieces, its long strings copied once): lmp_msg_new pushes a
 * Message of n bytes, closed, and returns where they go; lmp_msg_open,
 * once they are written, takes the holds of the Message on the top of the
 * stack and opens it. */
char *lmp_msg_new(lua_State *L, size_t n, size_t nobj);
void lmp_msg_open(lua_State *L, size_t nobj);
/* A Message's holds, for a keeper of encoded bytes of its own (a Pool's
 * board): lmp_msg_hold holds for this process every object the message
 * [p, p+n) names, and says how many in *held: 0, or -ENOMEM when the
 * arena is exhausted, none held.  lmp_msg_unhold drops the first nobj of
 * them.  Neither raises. */
int lmp_msg_hold(const char *p, size_t n, size_t *held);
void lmp_msg_unhold(const char *p, size_t n, size_t nobj);
/* Pushes a new Message of an array of n Messages, copies of the messages
 * in s (their bytes, and how many objects each names): what message{m1,
 * m2...} makes of Messages m1, m2..., without them. */
typedef struct lmp_span {
  const char *p;
  size_t n, nobj;
} lmp_span;
void lmp_msg_push_array(lua_State *L, const lmp_span *s, int n);
/* The bytes of the Message at idx (and how many objects it holds, when
 * nobj is not NULL), or NULL if it is not a Message; raises if it is
 * closed. */
const char *lmp_tomsg(lua_State *L, int idx, size_t *n, size_t *nobj);
extern const lmp_class lmp_message_class;

/* luamp.core's message(v, [root]) and message_slice(t, i, j, [root]) ->
 * Message, decode(m) -> v and decode_into(m, t, at) -> n (a string for m
 * is read too), with the Message class. */
extern const lmp_family lmp_codec_family;

/* ------------------------------------------------------------- walking */

/* Walks the message [p, p+n) without Lua, calling fn(o, ud) on every
 * object it names that lmp_obj_check accepts.  Returns 0, or -1 at the
 * first thing it cannot read (having called fn on the objects before it).
 * Never raises. */
int lmp_msg_walk(const char *p, size_t n, void (*fn)(lmp_obj *, void *),
                 void *ud);

/* Re-signs a message that came from another machine, after its sender
 * was authenticated (a broker message's HMAC): every function's bytecode
 * MAC, in embedded messages too, is rewritten under this family's key, so
 * that the message decodes here like one of our own.  Returns 0; -1 if it
 * cannot be read or a function's bytecode is malformed (lmp_codecheck);
 * -2 if it names a shared object, which no other machine can name.  Never
 * raises. */
int lmp_msg_resign(char *p, size_t n);

/* Drops the references a message holds on luamp objects.  Call once per
 * encoded message that is consumed or discarded; lmp_msg_retain takes
 * them, for a message encoded bare.  Never raise. */
void lmp_msg_release(const char *p, size_t n);
void lmp_msg_retain(const char *p, size_t n);

/* Whether the n bytes at code are a binary chunk whose every count agrees
 * with what it sizes, as Lua's loader trusts (bytecode.c): 0 if so, else
 * -1.  lmp_msg_resign checks each function it takes as this family's. */
int lmp_codecheck(const char *code, size_t n);

/* The MAC of a function's bytecode (SipHash-2-4 under the family's key),
 * or 0 with *ok cleared when there is no arena and so no key. */
uint64_t lmp_codemac(const char *code, size_t n, int *ok);

/* SHA-256 (FIPS 180-4), by parts, and HMAC-SHA-256 (RFC 2104): the
 * challenge and response that authenticate a connection, and the MAC of
 * every broker message. */
#define LMP_SHA256_SIZE 32
typedef struct lmp_sha256 {
  uint32_t h[8];
  uint64_t len;
  unsigned char buf[64];
} lmp_sha256;
void lmp_sha256_init(lmp_sha256 *s);
void lmp_sha256_update(lmp_sha256 *s, const void *data, size_t n);
void lmp_sha256_final(lmp_sha256 *s, unsigned char out[LMP_SHA256_SIZE]);
void lmp_hmac_sha256(const void *key, size_t keylen, const void *msg,
                     size_t n, unsigned char out[LMP_SHA256_SIZE]);
/* The same over the concatenation of nparts parts. */
void lmp_hmac_sha256_parts(const void *key, size_t keylen, int nparts,
                           const void *const *parts, const size_t *lens,
                           unsigned char out[LMP_SHA256_SIZE]);

/* Raises a message without a position, unlike luaL_error: the codec's
 * errors are about a value, and its callers are mostly C. */
__attribute__((noreturn)) void lmp_codec_raise(lua_State *L, const char *fmt,
                                               ...);

/* ------------------------------------------------------------ bindings */

/* encode(v, [root]) -> string and encode_slice(t, i, j, [root]) ->
 * string: a message that owns no references, for the C tests and the
 * fuzzer; message and message_slice make the same as a Message; decode
 * and decode_into read either. */
int lmp_codec_encode(lua_State *L);
int lmp_codec_encode_slice(lua_State *L);
int lmp_codec_message(lua_State *L);
int lmp_codec_message_slice(lua_State *L);
int lmp_codec_decode(lua_State *L);
int lmp_codec_decode_into(lua_State *L);
int lmp_codec_require_modules(lua_State *L);

/* Before a fork (lmp_on_fork_parent): the names cache of modules and C
 * functions made, or made again if package.loaded has changed since, so
 * that children inherit it; the parent and each child compare it with
 * package.loaded once more at their next encode. */
void lmp_codec_before_fork(lua_State *L);

/* How a handle is made of a descriptor this process was handed at its
 * start (lmp_handed_take), registered by its type: the decoder makes the
 * k-th into a handle once, and each later mention is that handle. */
typedef void (*lmp_handed_make)(lua_State *L, int fd, unsigned flags,
                                lmp_off chan);
void lmp_codec_handed_maker(lmp_handed_make make);

#endif
