/* list.c -- List: an array of encoded values in the arena that every
 * process of the family reads and writes directly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "types.h"

/*
 * Layout.  A list holds a robust mutex and the offset of its array: one
 * arena block with its capacity, its length and the item offsets.  An
 * item is one arena block: the length of a codec message and the message.
 * The array grows by doubling.
 *
 * Death, with the arena's crash-safety kit, as in dict.c: every change is
 * committed with one store.  An append writes the new item's offset beyond
 * the end and then the length; a pop lowers the length; a replaced item
 * leaves its place before it is freed; an insert or a removal in the
 * middle builds a new array (length included) and publishes it
 * (lmp_publish), instead of moving offsets in place.  Items in transit are
 * pending (LMP_PEND_IN coming, LMP_PEND_OUT leaving), and the next locker
 * after a death settles the dead holder's pending blocks.
 *
 * An extend is one change too, all its items or none, for readers and for
 * a kill alike.  Its values are encoded first (one that cannot be sent
 * raises before anything is made), then made into items that a batch
 * names, one block pending as LMP_PEND_IN (lmp_alloc_at).  Under the
 * guard the array gets room first, then the list names the batch (the
 * journal opens), the items go beyond the end, the length takes them in,
 * the batch is marked done (the commit) and the journal closes.  A
 * process killed with the journal open has its change undone by the next
 * locker (list_repair puts the length back unless the batch is done), and
 * its reaper frees the items of a batch not done (list_release).  A clear
 * is the same journal the other way (see batch).
 */

#define LIST "luamp.List"
#define MINCAP 8

typedef lmp_cmsg item; /* a counted message block */

typedef struct array {
  uint64_t cap;
  _Atomic uint64_t len;
  lmp_off o[];
} array;

typedef struct list {
  lmp_obj h;
  lmp_guard g;
  _Atomic lmp_off arr;
  _Atomic lmp_off batch; /* the journal: an extend under way, or 0 */
} list;

#define BATCH_MAGIC 0x6863746162747369ull /* "istbatch", no item's */
#define CLEAR_MAGIC 0x7261656c63747369ull /* "istclear", nor a batch's */

typedef struct batch {
  _Atomic uint64_t magic; /* BATCH_MAGIC once n and o[] are set */
  uint64_t n;             /* items */
  uint64_t len_was;       /* the list's length before */
  _Atomic uint64_t done;  /* 1 once the items are the list's */
  lmp_off o[];            /* each item, as it is made */
} batch;

/* A clear is the same journal the other way (CLEAR_MAGIC): the batch
 * names every item of the list, the length goes to 0, and once done the
 * items are the batch's, to be freed; a clear cut short before that
 * leaves the list whole (list_repair). */

static array *A(list *l) { return LMP_PTR(atomic_load(&l->arr)); }
static lmp_off *ARR(list *l) { return A(l)->o; }
static uint64_t LEN(list *l) { return atomic_load(&A(l)->len); }

static int owns_locked(lmp_obj *o, lmp_off blk) {
  list *l = (list *)o;
  lmp_off *a;
  uint64_t i, n;
  if (atomic_load(&l->arr) == 0) return 0; /* still being made */
  a = ARR(l);
  n = LEN(l);
  if (LMP_OFF(A(l)) == blk) return 1;
  for (i = 0; i < n; i++)
    if (a[i] == blk) return 1;
  return 0;
}

static void llock(list *l) { lmp_guard_lock(&l->g, &l->h); }
static void lunlock(list *l) { lmp_guard_unlock(&l->g); }

/* After a process died holding the guard: an extend it left under way
 * is undone, unless it was done. */
static void list_repair(lmp_obj *o) {
  list *l = (list *)o;
  lmp_off at = atomic_load(&l->batch);
  batch *b;
  if (at == 0) return;
  b = LMP_PTR(at);
  if (!atomic_load(&b->done)) atomic_store(&A(l)->len, b->len_was);
  atomic_store(&l->batch, 0);
}

/* Frees the items of batch b that are not the list's (all of them, unless
 * it is done), each with the word that names it, so that a run cut short
 * can be run again. */
static void batch_free_items(batch *b) {
  uint64_t i;
  if (atomic_load(&b->done)) return;
  for (i = 0; i < b->n; i++)
    if (b->o[i] != 0) lmp_cmsg_drop(LMP_PTR(b->o[i]), &b->o[i]);
}

/* A pending block freed by a reaper: an item's references go with it, a
 * batch's items with it (an extend's unless done, a clear's once done). */
static void list_release(lmp_obj *o, lmp_off blk) {
  batch *b = LMP_PTR(blk);
  uint64_t magic = atomic_load(&b->magic);
  if (magic != BATCH_MAGIC && magic != CLEAR_MAGIC) {
    lmp_cmsg_release(o, blk);
    return;
  }
  if ((magic == CLEAR_MAGIC) != (atomic_load(&b->done) != 0)) return;
  {
    uint64_t i;
    for (i = 0; i < b->n; i++) {
      if (b->o[i] == 0) continue;
      lmp_cmsg_release(o, b->o[i]);
      lmp_heap_free(LMP_PTR(b->o[i]), &b->o[i]);
    }
  }
}

/* Run again after a kill cut it short, it finishes the job: each item is
 * freed with the array's word that names it, then the array with the
 * list's. */
static void list_dtor(lmp_obj *o) {
  list *l = (list *)o;
  lmp_off *a;
  uint64_t i, n;
  if (atomic_load(&l->arr) != 0) { /* 0: never made whole, or freed */
    a = ARR(l);
    n = LEN(l);
    for (i = 0; i < n; i++) {
      if (a[i] != 0) lmp_cmsg_drop(LMP_PTR(a[i]), &a[i]);
    }
    lmp_heap_free(A(l), (lmp_off *)&l->arr);
  }
  lmp_guard_destroy(&l->g);
}

/* Unlocks l and drops item off, which the caller registered as leaving
 * (LMP_PEND_OUT) and then took out of the list. */
static void drop_unlock(list *l, lmp_off off) {
  item *it = LMP_PTR(off);
  lunlock(l);
  lmp_msg_unretain_counted(it->data, it->len, &it->refs);
  lmp_free_pending(it, LMP_PEND_OUT);
}

/* A new array of cap places holding the current items, with item `put`
 * placed before index `at` (when put != 0), or with index `at` left out
 * (when put == 0 and at < len), switched to in one store: items and length
 * at once.  The caller holds the lock.  0 or -ENOMEM. */
static int rebuild(list *l, uint64_t cap, uint64_t at, lmp_off put) {
  array *a = A(l), *na;
  uint64_t n = atomic_load(&a->len), i, j = 0;
  na = lmp_alloc_pending(&l->h, sizeof(array) + cap * sizeof(lmp_off),
                         LMP_PEND_NEW);
  if (na == NULL) return -ENOMEM;
  for (i = 0; i <= n; i++) {
    if (i == at && put != 0) na->o[j++] = put;
    if (i == n) break;
    if (i == at && put == 0) continue;
    na->o[j++] = a->o[i];
  }
  na->cap = cap;
  atomic_store(&na->len, j);
  lmp_publish(&l->h, &l->arr, na);
  return 0;
}

/* ---------------------------------------------------------------- Lua */

static list *checklist(lua_State *L, lmp_bufhandle **hp) {
  list *l = (list *)lmp_checkobj(L, 1);
  if (hp != NULL) *hp = lua_touserdata(L, 1);
  return l;
}

/* Copies item i (0-based) into b under the guard held by the caller,
 * holding what it names (*held). */
static int copy_item(list *l, uint64_t i, lmp_buf *b, size_t *held) {
  item *it = LMP_PTR(ARR(l)[i]);
  b->len = 0;
  if (lmp_buf_reserve(b, it->len) < 0) return -ENOMEM;
  memcpy(b->data, it->data, it->len);
  b->len = it->len;
  return lmp_hold_copy(&it->refs, b->data, b->len, held);
}

/* The value at idx as a new item registered as LMP_PEND_IN, which then
 * takes the references of the objects it names (see lmp_encode_bare). */
static item *newitem(lua_State *L, list *l, lmp_bufhandle *h, int idx) {
  item *it;
  size_t nobj;
  lmp_buf *b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  nobj = lmp_encode_bare(L, idx, "value", b);
  it = lmp_cmsg_alloc(&l->h, b->len, LMP_PEND_IN);
  if (it == NULL) lmp_nomem(L, sizeof(item) + b->len);
  memcpy(it->data, b->data, b->len);
  lmp_buf_unclaim(b);
  lmp_cmsg_seal(it, nobj);
  return it;
}

static void discard(item *it) {
  lmp_msg_unretain_counted(it->data, it->len, &it->refs);
  lmp_free_pending(it, LMP_PEND_IN);
}

/* The 1-based index argument at idx -> 0-based; raises Lua's argument
 * error for a value that is not an integer (a numeric string too: it is
 * another key, in a table). */
static int64_t checkindex(lua_State *L, int idx) {
  int isint;
  lua_Integer i = lua_tointegerx(L, idx, &isint);
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "number");
  if (!isint)
    luaL_argerror(L, idx, lua_pushfstring(L, "number %s has no integer "
                  "representation", lua_tostring(L, idx)));
  return (int64_t)i - 1;
}

/* Appends it (or inserts it before 0-based `at`); the caller holds the
 * guard.  0 or -ENOMEM. */
static int put_locked(list *l, item *it, uint64_t at) {
  array *a = A(l);
  uint64_t n = atomic_load(&a->len);
  if (at >= n && n < a->cap) { /* room at the end */
    a->o[n] = LMP_OFF(it);
    atomic_store(&a->len, n + 1); /* the commit */
  } else if (rebuild(l, n + 1 > a->cap ? a->cap * 2 : a->cap,
                     at > n ? n : at, LMP_OFF(it)) < 0) {
    return -ENOMEM;
  }
  lmp_pending_clear(LMP_PEND_IN);
  return 0;
}

/* l[i]: nil past the end, as with a table */
static int list_field(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  int isint;
  lua_Integer k = lua_tointegerx(L, 2, &isint);
  int rc = 1;
  lmp_buf *b;
  size_t held = 0;
  if (!isint || lua_type(L, 2) != LUA_TNUMBER) return 0;
  b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  llock(l);
  if (k >= 1 && (uint64_t)k <= LEN(l))
    rc = copy_item(l, (uint64_t)k - 1, b, &held);
  lunlock(l);
  if (rc == 0) lmp_held_decode(L, b->data, b->len, held);
  lmp_buf_unclaim(b);
  if (rc < 0) return lmp_nomem(L, 0);
  return rc == 0;
}

/* With the guard held: raises for the index at 2, outside 1 .. n + 1, and
 * lets go of the item that was to go there. */
static int out_of_range(lua_State *L, list *l, item *it, uint64_t n) {
  lunlock(l);
  discard(it);
  return luaL_argerror(L, 2, lua_pushfstring(L, "index %I out of range "
                       "(list has %I items)", lua_tointeger(L, 2),
                       (lua_Integer)n));
}

/* With the guard held: inserts it before 0-based position i (UINT64_MAX:
 * at the end) and unlocks; raises if the arena is full. */
static void insert_unlock(lua_State *L, list *l, item *it, uint64_t i) {
  int rc = put_locked(l, it, i);
  lunlock(l);
  if (rc < 0) {
    discard(it);
    lmp_nomem(L, 0);
  }
}

/* l[i] = v: replaces, or appends at #l + 1; further out raises */
static int list_newindex(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  int64_t i = checkindex(L, 2);
  item *it = newitem(L, l, h, 3);
  uint64_t n;
  llock(l);
  n = LEN(l);
  if (i < 0 || (uint64_t)i > n) return out_of_range(L, l, it, n);
  if ((uint64_t)i == n) {
    insert_unlock(L, l, it, n);
  } else {
    lmp_off old = ARR(l)[i];
    lmp_pending_set(&l->h, LMP_PTR(old), LMP_PEND_OUT);
    ARR(l)[i] = LMP_OFF(it); /* the commit */
    lmp_pending_clear(LMP_PEND_IN);
    drop_unlock(l, old);
  }
  return 0;
}

/* The length, read under the guard: the array that holds it may be
 * replaced and freed by another process between reading where it is and
 * reading it. */
static uint64_t locked_len(list *l) {
  uint64_t n;
  llock(l);
  n = LEN(l);
  lunlock(l);
  return n;
}

static int list_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)locked_len(checklist(L, NULL)));
  return 1;
}

/* Appends the value at idx. */
static void append(lua_State *L, list *l, lmp_bufhandle *h, int idx) {
  item *it = newitem(L, l, h, idx);
  llock(l);
  insert_unlock(L, l, it, UINT64_MAX);
}

/* append(v) */
static int list_append(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  luaL_checkany(L, 2);
  append(L, l, h, 2);
  return 0;
}

/* The values t[1] .. t[n] of the table at t encoded into b, one record
 * each: the message's length (8 bytes), how many objects it names (8),
 * the message.  Raises, naming the value's path, for one that cannot be
 * sent. */
static void encode_items(lua_State *L, int t, lua_Integer n, lmp_buf *b) {
  lua_Integer i;
  int top = lua_gettop(L);
  lua_pushinteger(L, 0); /* the key, for an error's path */
  for (i = 1; i <= n; i++) {
    size_t at = b->len;
    uint64_t len, nobj;
    if (lmp_buf_reserve(b, 16) < 0) luaL_error(L, "not enough memory");
    b->len += 16;
    lua_pushinteger(L, i);
    lua_replace(L, top + 1);
    lua_rawgeti(L, t, i);
    nobj = lmp_encode_bare_item(L, top + 2, top + 1, "value", b);
    lua_settop(L, top + 1);
    len = b->len - at - 16;
    memcpy(b->data + at, &len, 8);
    memcpy(b->data + at + 8, &nobj, 8);
  }
  lua_settop(L, top);
}

/* A batch pending as LMP_PEND_IN for l, of the n items recorded in b, each
 * holding its references; NULL when the arena is exhausted (nothing is
 * left made). */
static batch *make_batch(list *l, lmp_buf *b, uint64_t n) {
  batch *bt = lmp_alloc_pending(&l->h, sizeof(batch) + n * sizeof(lmp_off),
                                LMP_PEND_IN);
  size_t pos = 0;
  uint64_t i;
  if (bt == NULL) return NULL;
  memset(bt->o, 0, n * sizeof(lmp_off));
  bt->n = n;
  bt->len_was = 0;
  atomic_store(&bt->done, 0);
  atomic_store(&bt->magic, BATCH_MAGIC); /* after n and o[] */
  for (i = 0; i < n; i++) {
    uint64_t len, nobj;
    item *it;
    memcpy(&len, b->data + pos, 8);
    memcpy(&nobj, b->data + pos + 8, 8);
    it = lmp_cmsg_alloc_at((size_t)len, &bt->o[i]);
    if (it == NULL) {
      batch_free_items(bt);
      lmp_free_pending(bt, LMP_PEND_IN);
      return NULL;
    }
    memcpy(it->data, b->data + pos + 16, (size_t)len);
    lmp_cmsg_seal(it, (size_t)nobj);
    pos += 16 + (size_t)len;
  }
  return bt;
}

/* Links the items of batch bt in at the end, as one change (see the top
 * of the file); the caller holds the guard.  0, or -ENOMEM with nothing
 * changed. */
static int link_batch(list *l, batch *bt) {
  array *a = A(l);
  uint64_t n = atomic_load(&a->len), cap = a->cap, i;
  if (n + bt->n > cap) {
    while (n + bt->n > cap) cap *= 2;
    if (rebuild(l, cap, UINT64_MAX, 0) < 0) return -ENOMEM;
    a = A(l);
  }
  bt->len_was = n;
  atomic_store(&l->batch, LMP_OFF(bt)); /* the journal opens */
  for (i = 0; i < bt->n; i++) a->o[n + i] = bt->o[i];
  atomic_store(&a->len, n + bt->n);
  atomic_store(&bt->done, 1); /* the commit */
  atomic_store(&l->batch, 0);
  return 0;
}

/* Appends t[1] .. t[#t] (t.n if it has one) of the table at t, as one
 * change: all of them or, on an error, none. */
static void extend(lua_State *L, list *l, lmp_bufhandle *h, int t) {
  lua_Integer n;
  lmp_buf *b;
  batch *bt;
  int rc;
  lua_getfield(L, t, "n");
  n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_Integer)luaL_len(L, t);
  lua_pop(L, 1);
  if (n <= 0) return;
  b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  encode_items(L, t, n, b);
  bt = make_batch(l, b, (uint64_t)n);
  lmp_buf_unclaim(b);
  if (bt == NULL) lmp_nomem(L, 0);
  llock(l);
  rc = link_batch(l, bt);
  lunlock(l);
  if (rc < 0) batch_free_items(bt);
  lmp_free_pending(bt, LMP_PEND_IN);
  if (rc < 0) lmp_nomem(L, 0);
}

static const lmp_class list_class;

/* extend(t or List): appends t[1] .. t[#t] (t.n if it has one); a List's
 * items are those of a snapshot of it, so l:extend(l) doubles l */
static int list_extend(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  lmp_snapshot(L, 2, &list_class);
  luaL_argexpected(L, lua_type(L, 2) == LUA_TTABLE, 2, "table or List");
  extend(L, l, h, 2);
  return 0;
}

/* insert(i, v): before position i (1 .. #l + 1); insert(v) appends, as
 * table.insert does */
static int list_insert(lua_State *L) {
  lmp_bufhandle *h;
  list *l;
  int64_t i;
  item *it;
  uint64_t n;
  if (lua_gettop(L) == 2) return list_append(L);
  l = checklist(L, &h);
  i = checkindex(L, 2);
  luaL_checkany(L, 3);
  it = newitem(L, l, h, 3);
  llock(l);
  n = LEN(l);
  if (i < 0 || (uint64_t)i > n) return out_of_range(L, l, it, n);
  insert_unlock(L, l, it, (uint64_t)i);
  return 0;
}

/* Takes item i (0-based) out and pushes its value; the caller holds the
 * guard, which this releases. */
static int take_unlock(lua_State *L, list *l, uint64_t i) {
  uint64_t n = LEN(l);
  lmp_off off = ARR(l)[i];
  item *it = LMP_PTR(off);
  lmp_pending_set(&l->h, it, LMP_PEND_OUT); /* leaving, once removed */
  if (i == n - 1) {
    atomic_store(&A(l)->len, n - 1); /* the commit */
  } else if (rebuild(l, A(l)->cap, i, 0) < 0) {
    lmp_pending_clear(LMP_PEND_OUT);
    lunlock(l);
    return lmp_nomem(L, 0);
  }
  lunlock(l);
  lmp_take_decode(L, it->data, it->len, it, &it->refs);
  return 1;
}

/* pop([i]) -> the value removed (the last by default); nil when empty */
static int list_pop(lua_State *L) {
  list *l = checklist(L, NULL);
  uint64_t n;
  lua_Integer k = luaL_optinteger(L, 2, -1);
  int64_t i;
  llock(l);
  n = LEN(l);
  /* Nothing at #l + 1 (pop(), pop(-1) or pop(1) of an empty list), as
   * table.remove has it. */
  if ((k == -1 && n == 0) || (uint64_t)k == n + 1) {
    lunlock(l);
    lua_pushnil(L);
    return 1;
  }
  /* -1 is the last, as in Python (and string.sub) */
  i = k < 0 ? (int64_t)n + k : k - 1;
  if (i < 0 || (uint64_t)i >= n) {
    lunlock(l);
    return luaL_argerror(L, 2, lua_pushfstring(L, "index %I out of range "
                         "(list has %I items)", k, (lua_Integer)n));
  }
  return take_unlock(L, l, (uint64_t)i);
}

/* The 0-based index of the first item from `from` up to (not including)
 * `to` equal to the message (p, n), or -1; the caller holds the guard. */
static int64_t find_locked(list *l, const char *p, size_t n, uint64_t from,
                           uint64_t to) {
  lmp_off *a = ARR(l);
  uint64_t i, len = LEN(l);
  if (to > len) to = len;
  for (i = from; i < to; i++) {
    item *it = LMP_PTR(a[i]);
    if (lmp_msg_equal(it->data, it->len, p, n)) return (int64_t)i;
  }
  return -1;
}

/* Equality is by content (lmp_msg_equal): numbers as Lua compares them,
 * tables as maps whatever order their keys were set in, shared objects by
 * identity. */
static lmp_buf *encode_probe(lua_State *L, lmp_bufhandle *h, int idx,
                             void *frame) {
  lmp_buf *b = lmp_buf_claim(L, h->buf, frame);
  lmp_encode_bare(L, idx, "value", b); /* only compared: no refs */
  return b;
}

/* Takes the guard and finds the first item equal to the value at 2, at
 * the positions i (at 3, 1 by default) to j (at 4, -1 by default): its
 * 0-based index, or -1. */
static int64_t lock_find(lua_State *L, list *l, lmp_bufhandle *h) {
  lmp_buf *b;
  int64_t i;
  lua_Integer from = luaL_optinteger(L, 3, 1), to = luaL_optinteger(L, 4, -1);
  uint64_t n;
  luaL_checkany(L, 2);
  b = encode_probe(L, h, 2, LMP_FRAME());
  llock(l);
  n = LEN(l);
  i = find_locked(l, b->data, b->len, lmp_pos_from(from, n),
                  lmp_pos_to(to, n));
  lmp_buf_unclaim(b);
  return i;
}

/* remove(v): the first item equal to v; raises if there is none */
static int list_remove(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  int64_t i;
  lua_settop(L, 2); /* the whole list */
  i = lock_find(L, l, h);
  if (i < 0) {
    lunlock(l);
    return luaL_error(L, "value not in list");
  }
  take_unlock(L, l, (uint64_t)i);
  return 0;
}

/* index(v, [i], [j]) -> the 1-based index of the first item equal to v
 * from position i to position j (as string.sub counts them) */
static int list_index_of(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  int64_t i = lock_find(L, l, h);
  lunlock(l);
  if (i < 0) return luaL_error(L, "value not in list");
  lua_pushinteger(L, i + 1);
  return 1;
}

/* count(v) -> how many items equal v */
static int list_count(lua_State *L) {
  lmp_bufhandle *h;
  list *l = checklist(L, &h);
  lua_Integer c = 0;
  uint64_t i, len;
  lmp_buf *b;
  luaL_checkany(L, 2);
  b = encode_probe(L, h, 2, LMP_FRAME());
  llock(l);
  len = LEN(l);
  for (i = 0; i < len; i++) {
    item *it = LMP_PTR(ARR(l)[i]);
    if (lmp_msg_equal(it->data, it->len, b->data, b->len)) c++;
  }
  lunlock(l);
  lmp_buf_unclaim(b);
  lua_pushinteger(L, c);
  return 1;
}

/* clear(): takes out every item as one change, all or none for a kill
 * too (see batch), and lets go of the array the list grew to; the items
 * are freed after the guard is let go.  Without the memory for the batch,
 * the items go one by one under the guard, each with its own commit as
 * pop makes it. */
static int list_clear(lua_State *L) {
  list *l = checklist(L, NULL);
  uint64_t n, i;
  batch *bt;
  llock(l);
  n = LEN(l);
  bt = n == 0 ? NULL
              : lmp_alloc_pending(&l->h, sizeof(batch) + n * sizeof(lmp_off),
                                  LMP_PEND_IN);
  if (bt != NULL) {
    memcpy(bt->o, ARR(l), n * sizeof(lmp_off));
    bt->n = n;
    bt->len_was = n;
    atomic_store(&bt->done, 0);
    atomic_store(&bt->magic, CLEAR_MAGIC); /* after n and o[] */
    atomic_store(&l->batch, LMP_OFF(bt));  /* the journal opens */
    atomic_store(&A(l)->len, 0);
    atomic_store(&bt->done, 1); /* the commit: the items are the batch's */
    atomic_store(&l->batch, 0);
  } else {
    while ((n = LEN(l)) > 0) {
      item *it = LMP_PTR(ARR(l)[n - 1]);
      lmp_pending_set(&l->h, it, LMP_PEND_OUT); /* leaving, once removed */
      atomic_store(&A(l)->len, n - 1);          /* the commit */
      lmp_msg_unretain_counted(it->data, it->len, &it->refs);
      lmp_free_pending(it, LMP_PEND_OUT);
    }
  }
  /* The array it grew to goes too, as Python's clear lets go of it
   * (without the memory, it stays). */
  if (A(l)->cap > MINCAP) (void)rebuild(l, MINCAP, 0, 0);
  lunlock(l);
  if (bt != NULL) {
    for (i = 0; i < bt->n; i++)
      if (bt->o[i] != 0) lmp_cmsg_drop(LMP_PTR(bt->o[i]), &bt->o[i]);
    lmp_free_pending(bt, LMP_PEND_IN);
  }
  return 0;
}

/* reverse(): the items in the opposite order, in a new array switched to
 * with one store */
static int list_reverse(lua_State *L) {
  list *l = checklist(L, NULL);
  array *a, *na;
  uint64_t n, i;
  llock(l);
  a = A(l);
  n = atomic_load(&a->len);
  na = lmp_alloc_pending(&l->h, sizeof(array) + a->cap * sizeof(lmp_off),
                         LMP_PEND_NEW);
  if (na == NULL) {
    lunlock(l);
    return lmp_nomem(L, sizeof(array) + a->cap * sizeof(lmp_off));
  }
  for (i = 0; i < n; i++) na->o[i] = a->o[n - 1 - i];
  na->cap = a->cap;
  atomic_store(&na->len, n);
  lmp_publish(&l->h, &l->arr, na);
  lunlock(l);
  return 0;
}

/* Lets go of what the items copied into b from pos on hold: each record
 * is the item's length (8 bytes), how many objects it holds (8), and the
 * item. */
static void unhold_records(lmp_buf *b, size_t pos) {
  while (pos < b->len) {
    uint64_t n, held;
    memcpy(&n, b->data + pos, 8);
    memcpy(&held, b->data + pos + 8, 8);
    lmp_msg_unhold(b->data + pos + 16, (size_t)n, (size_t)held);
    pos += 16 + n;
  }
}

/* totable([i], [j]) -> a table of the items from position i to position
 * j (as string.sub counts them: 1 and -1 by default), n set: Python's
 * l[i:j], copied out under the guard at once */
static int list_totable(lua_State *L) {
  list *l = checklist(L, NULL);
  lua_Integer from = luaL_optinteger(L, 2, 1), to = luaL_optinteger(L, 3, -1);
  lmp_buf *b = lmp_buf_new(L);
  uint64_t i, first, len;
  size_t pos;
  lua_Integer k = 0;
  int full = 0;
  llock(l);
  first = lmp_pos_from(from, LEN(l));
  len = lmp_pos_to(to, LEN(l));
  for (i = first; i < len; i++) {
    item *it = LMP_PTR(ARR(l)[i]);
    size_t held;
    uint64_t h64;
    if (lmp_buf_reserve(b, 16 + it->len) < 0) {
      full = 1;
      break;
    }
    memcpy(b->data + b->len, &it->len, 8);
    memcpy(b->data + b->len + 16, it->data, it->len);
    if (lmp_hold_copy(&it->refs, b->data + b->len + 16, it->len, &held) <
        0) {
      full = 1;
      break;
    }
    h64 = held;
    memcpy(b->data + b->len + 8, &h64, 8);
    b->len += 16 + it->len;
  }
  lunlock(l);
  if (full) {
    unhold_records(b, 0);
    return luaL_error(L, "not enough memory");
  }
  lua_createtable(L, len > first ? (int)(len - first) : 0, 1);
  for (pos = 0; pos < b->len;) {
    uint64_t n, held;
    memcpy(&n, b->data + pos, 8);
    memcpy(&held, b->data + pos + 8, 8);
    if (lmp_held_decode_status(L, b->data + pos + 16, (size_t)n,
                               (size_t)held) != LUA_OK) {
      unhold_records(b, pos + 16 + n);
      return lua_error(L);
    }
    lua_rawseti(L, -2, ++k);
    pos += 16 + n;
  }
  lua_pushinteger(L, k);
  lua_setfield(L, -2, "n");
  return 1;
}

static void list_describe(lua_State *L, void *h) {
  list *l = (list *)((lmp_handle *)h)->obj;
  lua_pushfstring(L, "%I items", (lua_Integer)locked_len(l));
}

/* List([t]) */
/* List([t or List]) */
static int list_List(lua_State *L) {
  list *l;
  array *a;
  lmp_snapshot(L, 1, &list_class);
  luaL_argexpected(L, lua_isnoneornil(L, 1) || lua_istable(L, 1), 1,
                   "table or List");
  l = (list *)lmp_obj_new(LMP_T_LIST, 0, sizeof(list));
  if (l == NULL) return lmp_nomem(L, sizeof(list));
  lmp_guard_init(&l->g);
  /* Pending until published, so that a kill in between leaks no array. */
  a = lmp_alloc_pending(&l->h, sizeof(array) + MINCAP * sizeof(lmp_off),
                        LMP_PEND_NEW);
  if (a == NULL) {
    lmp_obj_discard(&l->h);
    return lmp_nomem(L, MINCAP * sizeof(lmp_off));
  }
  memset(a, 0, sizeof(array) + MINCAP * sizeof(lmp_off));
  a->cap = MINCAP;
  lmp_publish(&l->h, &l->arr, a);
  lmp_pushnew(L, &l->h);
  if (lua_istable(L, 1)) extend(L, l, lua_touserdata(L, -1), 1);
  return 1;
}

/* ---------------------------------------------------------------- classes */

static const luaL_Reg list_meth[] = {
  {"append", list_append}, {"extend", list_extend},
  {"insert", list_insert}, {"pop", list_pop},
  {"remove", list_remove}, {"index", list_index_of},
  {"count", list_count},   {"totable", list_totable},
  {"clear", list_clear},   {"reverse", list_reverse},
  {NULL, NULL}
};

static const luaL_Reg list_metameth[] = {
  {"__newindex", list_newindex}, {"__len", list_len}, {NULL, NULL}
};

static const lmp_type list_type = {
  .name = "list", .dtor = list_dtor, .guard = offsetof(list, g),
  .owns = owns_locked, .repair = list_repair, .release = list_release,
};

static const lmp_class list_class = {
  .name = LIST, .what = "list", .type = LMP_T_LIST, .obj = &list_type,
  .size = sizeof(lmp_bufhandle), .nuv = 1, .meth = list_meth,
  .metameth = list_metameth, .field = list_field,
  .bind = lmp_bufhandle_bind,
  .describe = list_describe,
};

static const lmp_class *const list_classes[] = {&list_class, NULL};

static const luaL_Reg list_funcs[] = {{"List", list_List}, {NULL, NULL}};

const lmp_family lmp_list_family = {list_classes, list_funcs, NULL};
