/* list.c -- List: an array of encoded values in the arena that every
 * process of the family reads and writes directly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"

/*
 * Layout.  A list holds a robust mutex and the offset of its array: one
 * arena block with its capacity, its length and the item offsets.  An
 * item is one arena block: the length of a codec message and the message.
 * The array grows by doubling.
 *
 * Death.  As in dict.c: every change is committed with one store.  An
 * append writes the new item's offset beyond the end and then the length;
 * a pop lowers the length; a replaced item leaves its place before it is
 * freed; an insert or a removal in the middle builds a new array (length
 * included) and switches to it, instead of moving offsets in place.
 * Items and arrays in transit are pending (lmp_alloc_pending), and the
 * next locker after a death settles the dead holder's pending blocks.
 */

#define LIST "luamp.List"
#define MINCAP 8
#define ITEM_MAGIC 0x6d657469u /* "item" */

typedef struct item {
  uint32_t magic, pad;
  uint64_t len;
  _Atomic uint64_t refs; /* references the value has taken so far */
  char data[];
} item;

typedef struct array {
  uint64_t cap;
  _Atomic uint64_t len;
  lmp_off o[];
} array;

typedef struct list {
  lmp_obj h;
  pthread_mutex_t mu;
  _Atomic lmp_off arr;
  uint32_t holder; /* slot + 1 of the process holding mu, or 0 */
} list;

static array *A(list *l) { return LMP_PTR(atomic_load(&l->arr)); }
static lmp_off *ARR(list *l) { return A(l)->o; }
static uint64_t LEN(list *l) { return atomic_load(&A(l)->len); }

static int owns_locked(lmp_obj *o, lmp_off blk) {
  list *l = (list *)o;
  lmp_off *a = ARR(l);
  uint64_t i, n = LEN(l);
  if (LMP_OFF(A(l)) == blk) return 1;
  for (i = 0; i < n; i++)
    if (a[i] == blk) return 1;
  return 0;
}

static void llock(list *l) {
  if (lmp_mutex_lock(&l->mu))
    lmp_settle_pending(&l->h, l->holder, owns_locked);
  l->holder = lmp_self_index + 1;
}

static void lunlock(list *l) {
  l->holder = 0;
  pthread_mutex_unlock(&l->mu);
}

static int list_owns(lmp_obj *o, lmp_off blk) {
  list *l = (list *)o;
  int found;
  llock(l);
  found = owns_locked(o, blk);
  lunlock(l);
  return found;
}

static void free_item(lmp_off off) {
  item *it = LMP_PTR(off);
  lmp_msg_unretain_counted(it->data, it->len, &it->refs);
  lmp_free(it);
}

static void list_dtor(lmp_obj *o) {
  list *l = (list *)o;
  lmp_off *a = ARR(l);
  uint64_t i, n = LEN(l);
  for (i = 0; i < n; i++) free_item(a[i]);
  lmp_free(A(l));
  pthread_mutex_destroy(&l->mu);
}

/* Takes item off out of the list's hands: the caller registered it as
 * leaving (pending entry 2), committed its removal and holds the lock. */
static void drop_locked(list *l, lmp_off off) {
  item *it = LMP_PTR(off);
  lunlock(l);
  lmp_msg_unretain_counted(it->data, it->len, &it->refs);
  lmp_free_pending(it, 2);
}

/* A pending item freed by a reaper: its references go with it. */
static void list_release(lmp_obj *o, lmp_off blk) {
  item *it = LMP_PTR(blk);
  (void)o;
  if (it->magic == ITEM_MAGIC)
    lmp_msg_release_counted(it->data, it->len, atomic_load(&it->refs));
}

/* A new array of cap places holding the current items, with item `put`
 * placed before index `at` (when put != 0), or with index `at` left out
 * (when put == 0 and at < len), switched to in one store: items and length
 * at once.  The caller holds the lock.  0 or -ENOMEM. */
static int rebuild(list *l, uint64_t cap, uint64_t at, lmp_off put) {
  array *a = A(l), *na;
  uint64_t n = atomic_load(&a->len), i, j = 0;
  na = lmp_alloc_pending(&l->h, sizeof(array) + cap * sizeof(lmp_off), 1);
  if (na == NULL) return -ENOMEM;
  for (i = 0; i <= n; i++) {
    if (i == at && put != 0) na->o[j++] = put;
    if (i == n) break;
    if (i == at && put == 0) continue;
    na->o[j++] = a->o[i];
  }
  na->cap = cap;
  atomic_store(&na->len, j);
  lmp_pending_set(&l->h, a, 2); /* leaving, once the switch is made */
  atomic_store(&l->arr, LMP_OFF(na)); /* the commit */
  lmp_pending_clear(1);
  lmp_free_pending(a, 2);
  return 0;
}

/* ---------------------------------------------------------------- Lua */

typedef struct lhandle {
  lmp_handle h;
  lmp_buf *buf;
} lhandle;

static list *checklist(lua_State *L, lhandle **hp) {
  lhandle *h = luaL_checkudata(L, 1, LIST);
  if (h->h.obj == NULL) luaL_error(L, "attempt to use a closed list");
  if (hp != NULL) *hp = h;
  return (list *)h->h.obj;
}

static void pushbuf(lua_State *L, lmp_buf *b) {
  lmp_decode(L, b->data, b->len);
}

/* Copies item i (0-based) into b under the lock held by the caller. */
static int copy_item(list *l, uint64_t i, lmp_buf *b) {
  item *it = LMP_PTR(ARR(l)[i]);
  b->len = 0;
  if (lmp_buf_reserve(b, it->len) < 0) return -ENOMEM;
  memcpy(b->data, it->data, it->len);
  b->len = it->len;
  return 0;
}

/* The value at idx as a new pending item, which then takes the
 * references of the objects it names (see lmp_encode_bare). */
static item *newitem(lua_State *L, list *l, lhandle *h, int idx) {
  item *it;
  size_t nobj;
  h->buf->len = 0;
  nobj = lmp_encode_bare(L, idx, "value", h->buf);
  it = lmp_alloc_pending(&l->h, sizeof(item) + h->buf->len, 0);
  if (it == NULL) lmp_nomem(L, sizeof(item) + h->buf->len);
  it->magic = ITEM_MAGIC;
  it->len = h->buf->len;
  atomic_store(&it->refs, 0);
  memcpy(it->data, h->buf->data, h->buf->len);
  if (nobj > 0) lmp_msg_retain_counted(it->data, it->len, &it->refs);
  return it;
}

static void discard(item *it) {
  lmp_msg_unretain_counted(it->data, it->len, &it->refs);
  lmp_free_pending(it, 0);
}

/* 1-based index at idx -> 0-based, or -1 if it is not an integer. */
static int64_t index0(lua_State *L, int idx) {
  int isint;
  lua_Integer i;
  if (lua_type(L, idx) != LUA_TNUMBER) return -1;
  i = lua_tointegerx(L, idx, &isint);
  return isint ? i - 1 : -1;
}

/* Appends it (or inserts it before 0-based `at`); the caller holds the
 * lock.  0 or -ENOMEM. */
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
  lmp_pending_clear(0);
  return 0;
}

/* l[i]: nil past the end, as with a table; methods by name */
static int list_index(lua_State *L) {
  lhandle *h;
  list *l;
  int64_t i;
  int rc = 1;
  if (lua_type(L, 2) == LUA_TSTRING) { /* methods, even when closed */
    luaL_checkudata(L, 1, LIST);
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, lua_tostring(L, 2));
    return 1;
  }
  l = checklist(L, &h);
  i = index0(L, 2);
  if (i < 0) return 0;
  llock(l);
  if ((uint64_t)i < LEN(l)) rc = copy_item(l, (uint64_t)i, h->buf);
  else rc = 1;
  lunlock(l);
  if (rc < 0) return lmp_nomem(L, 0);
  if (rc == 1) return 0;
  pushbuf(L, h->buf);
  return 1;
}

/* With the lock held: raises for the index at 2, outside 1 .. n + 1, and
 * lets go of the item that was to go there. */
static int out_of_range(lua_State *L, list *l, item *it, uint64_t n) {
  lunlock(l);
  discard(it);
  return luaL_error(L, "index %I out of range (list has %I items)",
                    lua_tointeger(L, 2), (lua_Integer)n);
}

/* With the lock held: inserts it before 0-based position i (UINT64_MAX:
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
  lhandle *h;
  list *l = checklist(L, &h);
  int64_t i = index0(L, 2);
  item *it;
  uint64_t n;
  if (i < 0 && lua_type(L, 2) != LUA_TNUMBER)
    return luaL_error(L, "List indexes are integers, not %s",
                      luaL_typename(L, 2));
  if (!lua_isinteger(L, 2) && i < 0)
    return luaL_error(L, "List indexes are integers, not %s",
                      lua_tostring(L, 2));
  it = newitem(L, l, h, 3);
  llock(l);
  n = LEN(l);
  if (i < 0 || (uint64_t)i > n) return out_of_range(L, l, it, n);
  if ((uint64_t)i == n) {
    insert_unlock(L, l, it, n);
  } else {
    lmp_off old = ARR(l)[i];
    lmp_pending_set(&l->h, LMP_PTR(old), 2);
    ARR(l)[i] = LMP_OFF(it); /* the commit */
    lmp_pending_clear(0);
    drop_locked(l, old);
  }
  return 0;
}

static int list_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)LEN(checklist(L, NULL)));
  return 1;
}

/* append(v) */
static int list_append(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  item *it;
  luaL_checkany(L, 2);
  it = newitem(L, l, h, 2);
  llock(l);
  insert_unlock(L, l, it, UINT64_MAX);
  return 0;
}

/* extend(t): appends t[1] .. t[#t] (t.n if it has one) */
static int list_extend(lua_State *L) {
  lua_Integer i, n;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "n");
  n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_Integer)luaL_len(L, 2);
  lua_pop(L, 1);
  for (i = 1; i <= n; i++) {
    lua_pushcfunction(L, list_append);
    lua_pushvalue(L, 1);
    lua_rawgeti(L, 2, i);
    lua_call(L, 2, 0);
  }
  return 0;
}

/* insert(i, v): before position i (1 .. #l + 1) */
static int list_insert(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  lua_Integer k = luaL_checkinteger(L, 2);
  int64_t i = k - 1;
  item *it;
  uint64_t n;
  luaL_checkany(L, 3);
  it = newitem(L, l, h, 3);
  llock(l);
  n = LEN(l);
  if (i < 0 || (uint64_t)i > n) return out_of_range(L, l, it, n);
  insert_unlock(L, l, it, (uint64_t)i);
  return 0;
}

/* Removes item i (0-based) and pushes its value; the caller holds the
 * lock, which this releases. */
static int take_locked(lua_State *L, list *l, lhandle *h, uint64_t i) {
  uint64_t n = LEN(l);
  lmp_off off = ARR(l)[i];
  int rc;
  if (copy_item(l, i, h->buf) < 0) {
    lunlock(l);
    return lmp_nomem(L, 0);
  }
  /* Leaving, once removed: entry 0 (a removal in the middle switches
   * arrays, which takes entries 1 and 2). */
  lmp_pending_set(&l->h, LMP_PTR(off), 0);
  if (i == n - 1) {
    atomic_store(&A(l)->len, n - 1); /* the commit */
  } else if (rebuild(l, A(l)->cap, i, 0) < 0) {
    lmp_pending_clear(0);
    lunlock(l);
    return lmp_nomem(L, 0);
  }
  {
    item *it = LMP_PTR(off);
    lunlock(l);
    rc = lmp_decode_protected(L, h->buf->data, h->buf->len);
    lmp_msg_unretain_counted(it->data, it->len, &it->refs);
    lmp_free_pending(it, 0);
  }
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

/* pop([i]) -> the value removed (the last by default); nil when empty */
static int list_pop(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  uint64_t n;
  lua_Integer k = luaL_optinteger(L, 2, -1);
  int64_t i;
  llock(l);
  n = LEN(l);
  if (lua_isnoneornil(L, 2) && n == 0) {
    lunlock(l);
    return 0;
  }
  /* -1 is the last, as in Python (and string.sub) */
  i = k < 0 ? (int64_t)n + k : k - 1;
  if (i < 0 || (uint64_t)i >= n) {
    lunlock(l);
    return luaL_error(L, "pop index %I out of range (list has %I items)",
                      lua_tointeger(L, 2), (lua_Integer)n);
  }
  return take_locked(L, l, h, (uint64_t)i);
}

/* Do the messages p and q hold equal values?  Numbers compare as Lua
 * compares them (2 == 2.0); anything else by its encoding. */
static int same(const char *p, size_t n, const char *q, size_t m) {
  lua_Integer i1, i2;
  lua_Number f1, f2;
  int k1 = lmp_msg_number(p, n, &i1, &f1), k2;
  if (k1 != 0 && (k2 = lmp_msg_number(q, m, &i2, &f2)) != 0) {
    if (k1 == 1 && k2 == 1) return i1 == i2;
    return (k1 == 1 ? (lua_Number)i1 : f1) == (k2 == 1 ? (lua_Number)i2 : f2);
  }
  return n == m && memcmp(p, q, n) == 0;
}

/* The 0-based index of the first item equal to the message (p, n), or
 * -1; the caller holds the lock. */
static int64_t find_locked(list *l, const char *p, size_t n) {
  lmp_off *a = ARR(l);
  uint64_t i, len = LEN(l);
  for (i = 0; i < len; i++) {
    item *it = LMP_PTR(a[i]);
    if (same(it->data, it->len, p, n)) return (int64_t)i;
  }
  return -1;
}

/* Equality is by content: numbers as Lua compares them, anything else
 * when it encodes alike (equal strings; tables with equal contents built
 * in the same order). */
static void encode_probe(lua_State *L, lhandle *h, int idx) {
  h->buf->len = 0;
  lmp_encode_bare(L, idx, "value", h->buf); /* only compared: no refs */
}

/* Takes the lock and finds the first item equal to the value at 2: its
 * 0-based index, or -1. */
static int64_t lock_find(lua_State *L, list *l, lhandle *h) {
  luaL_checkany(L, 2);
  encode_probe(L, h, 2);
  llock(l);
  return find_locked(l, h->buf->data, h->buf->len);
}

/* remove(v): the first item equal to v; raises if there is none */
static int list_remove(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  int64_t i = lock_find(L, l, h);
  if (i < 0) {
    lunlock(l);
    return luaL_error(L, "value not in list");
  }
  take_locked(L, l, h, (uint64_t)i);
  return 0;
}

/* index(v) -> the 1-based index of the first item equal to v */
static int list_index_of(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  int64_t i = lock_find(L, l, h);
  lunlock(l);
  if (i < 0) return luaL_error(L, "value not in list");
  lua_pushinteger(L, i + 1);
  return 1;
}

/* count(v) -> how many items equal v */
static int list_count(lua_State *L) {
  lhandle *h;
  list *l = checklist(L, &h);
  lua_Integer c = 0;
  uint64_t i, len;
  luaL_checkany(L, 2);
  encode_probe(L, h, 2);
  llock(l);
  len = LEN(l);
  for (i = 0; i < len; i++) {
    item *it = LMP_PTR(ARR(l)[i]);
    if (same(it->data, it->len, h->buf->data, h->buf->len)) c++;
  }
  lunlock(l);
  lua_pushinteger(L, c);
  return 1;
}

/* totable() -> a table of the items (n set), copied out under the lock */
static int list_totable(lua_State *L) {
  list *l = checklist(L, NULL);
  lmp_buf *b = lmp_buf_new(L);
  uint64_t i, len;
  size_t pos;
  lua_Integer k = 0;
  int full = 0;
  llock(l);
  len = LEN(l);
  for (i = 0; i < len; i++) {
    item *it = LMP_PTR(ARR(l)[i]);
    if (lmp_buf_reserve(b, 8 + it->len) < 0) {
      full = 1;
      break;
    }
    memcpy(b->data + b->len, &it->len, 8);
    memcpy(b->data + b->len + 8, it->data, it->len);
    b->len += 8 + it->len;
  }
  lunlock(l);
  if (full) return luaL_error(L, "not enough memory");
  lua_createtable(L, (int)len, 1);
  for (pos = 0; pos < b->len;) {
    uint64_t n;
    memcpy(&n, b->data + pos, 8);
    lmp_decode(L, b->data + pos + 8, (size_t)n);
    lua_rawseti(L, -2, ++k);
    pos += 8 + n;
  }
  lua_pushinteger(L, k);
  lua_setfield(L, -2, "n");
  return 1;
}

static int list_close(lua_State *L) {
  lmp_handle *h = lua_touserdata(L, 1);
  if (h != NULL) lmp_unbind(h);
  return 0;
}

static int list_tostring(lua_State *L) {
  lhandle *h = luaL_checkudata(L, 1, LIST);
  if (h->h.obj == NULL) lua_pushliteral(L, LIST " (closed)");
  else lua_pushfstring(L, LIST " (%p, %I items)", (void *)h->h.obj,
                       (lua_Integer)LEN((list *)h->h.obj));
  return 1;
}

static void push_list(lua_State *L, lmp_obj *o) {
  lhandle *h = (lhandle *)lmp_newhandle(L, sizeof(lhandle), LIST);
  h->buf = lmp_buf_new(L);
  lua_setiuservalue(L, -2, 1);
  lmp_bind(L, &h->h, o);
}

/* List([t]) */
static int list_List(lua_State *L) {
  list *l;
  array *a;
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  l = (list *)lmp_obj_new(LMP_T_LIST, sizeof(list));
  if (l == NULL) return lmp_nomem(L, sizeof(list));
  a = lmp_calloc(sizeof(array) + MINCAP * sizeof(lmp_off));
  if (a == NULL) {
    lmp_obj_incref(&l->h);
    lmp_obj_decref(&l->h);
    return lmp_nomem(L, MINCAP * sizeof(lmp_off));
  }
  lmp_mutex_init(&l->mu);
  a->cap = MINCAP;
  l->arr = LMP_OFF(a);
  push_list(L, &l->h);
  if (lua_istable(L, 1)) {
    lua_pushcfunction(L, list_extend);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, 1);
    lua_call(L, 2, 0);
  }
  return 1;
}

static const luaL_Reg list_meth[] = {
  {"append", list_append}, {"extend", list_extend},
  {"insert", list_insert}, {"pop", list_pop},
  {"remove", list_remove}, {"index", list_index_of},
  {"count", list_count},   {"totable", list_totable},
  {"close", list_close},   {NULL, NULL}
};

static const luaL_Reg list_metameth[] = {
  {"__index", list_index}, {"__newindex", list_newindex},
  {"__len", list_len},     {"__gc", list_close},
  {"__close", list_close}, {"__eq", lmp_handle_eq},
  {"__tostring", list_tostring}, {NULL, NULL}
};

int lmp_open_list(lua_State *L) {
  luaL_newmetatable(L, LIST);
  luaL_setfuncs(L, list_metameth, 0);
  luaL_newlib(L, list_meth);
  lua_setfield(L, -2, "methods");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "__luamp");
  lua_pop(L, 1);
  lmp_obj_settype(LMP_T_LIST, "list", list_dtor);
  lmp_obj_setowns(LMP_T_LIST, list_owns);
  lmp_obj_setrelease(LMP_T_LIST, list_release);
  lmp_settypepusher(LMP_T_LIST, push_list);
  lua_pushcfunction(L, list_List);
  lua_setfield(L, -2, "List");
  return 0;
}
