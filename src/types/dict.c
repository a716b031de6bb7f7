/* dict.c -- Dict and Namespace: a hash table of encoded values in the
 * arena that every process of the family reads and writes directly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <string.h>

#include "types.h"

/*
 * Layout.  A dict holds a robust mutex, a count and the offset of its slot
 * table: an open-addressing array of (hash, entry) pairs, probed linearly.
 * An entry is one arena block: the key (a type byte and its bytes) and the
 * value (a codec message).  Entry offset 0 marks a never-used slot, 1 a
 * deleted one.
 *
 * Death, with the arena's crash-safety kit.  Every change is committed with
 * one store: a new entry is written whole before its offset goes into a
 * slot; a replaced or deleted entry leaves its slot before it is freed; a
 * grown table is filled before it replaces the old one (lmp_publish).
 * Entries and tables in transit are pending (LMP_PEND_IN for a new entry,
 * LMP_PEND_OUT for one leaving), so the reaper of a killed process frees
 * them unless the dict owns them; `count` is recounted by the next locker
 * after a death (dict_repair).  Every operation holds the guard, so each is
 * atomic; pairs() walks a snapshot of the keys, so it sees every key that
 * exists for the whole walk exactly once, whatever others do meanwhile.
 *
 * An update is one change too, all its pairs or none, for readers and for
 * a kill alike.  Its keys and values are encoded first (one that cannot
 * be sent raises before anything is made), then made into entries that a
 * batch names, one block pending as LMP_PEND_IN (lmp_alloc_at).  Under
 * the guard the table grows first if it must, then the dict names the
 * batch (the journal opens) and each entry goes into its slot, the batch
 * recording first what the slot held; the batch is then marked committed
 * and the journal closes.  The entries replaced are the batch's to free,
 * once the guard is let go.  A process killed with the journal open has
 * its slots put back by the next locker, unless the batch was committed
 * (dict_repair), and its reaper frees what the batch holds that the dict
 * does not: the new entries, or once committed the replaced ones
 * (dict_release).  A clear is such a batch whose records put DELETED in
 * every slot (clear_batch).
 */

#define DICT "luamp.Dict"
#define NAMESPACE "luamp.Namespace"

#define EMPTY 0
#define DELETED 1
#define MINCAP 16
#define ENTRY_MAGIC 0x656e7472u /* "entr" */

enum { K_DICT, K_NAMESPACE };

typedef struct slot {
  uint64_t hash;
  lmp_off off;
} slot;

typedef struct table {
  uint64_t cap, used; /* used: slots ever filled, deleted ones included */
  slot s[];
} table;

typedef struct entry {
  uint32_t klen;
  uint32_t pad; /* ENTRY_MAGIC */
  uint64_t vlen;
  _Atomic uint64_t refs; /* references the value has taken so far */
  char data[]; /* key, padded to 8, then value */
} entry;

typedef struct dict {
  lmp_obj h; /* kind: K_DICT or K_NAMESPACE */
  lmp_guard g;
  _Atomic lmp_off tab;
  _Atomic int64_t count;
  _Atomic lmp_off batch; /* the journal: an update under way, or 0 */
} dict;

#define BATCH_MAGIC 0x68637462u /* "btch" */

typedef struct brec {
  lmp_off e;     /* the new entry, once made */
  lmp_off old;   /* what its slot held: an entry, EMPTY or DELETED */
  uint64_t slot; /* its slot */
  uint64_t hash;
} brec;

typedef struct batch {
  uint32_t zero;             /* (an entry's klen, never 0) */
  _Atomic uint32_t magic;    /* BATCH_MAGIC once n and r[] are set, where
                              * an entry has ENTRY_MAGIC */
  uint64_t n;                /* records */
  uint64_t used_was;         /* the table's `used` before */
  _Atomic uint64_t done;     /* records whose slot has been changed */
  _Atomic uint64_t committed;
  brec r[];
} batch;

static table *TAB(dict *d) { return LMP_PTR(atomic_load(&d->tab)); }

static const char *KEY(entry *e) { return e->data; }

static const char *VAL(entry *e) {
  return e->data + ((e->klen + 7) & ~(uint32_t)7);
}

static uint64_t hashkey(const char *k, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)k[i]) * 0x100000001b3ull;
  h ^= h >> 29;
  return h < 2 ? h + 2 : h;
}

/* After a process died holding the guard: puts back the slots of an
 * update it left under way, unless committed, and recounts. */
static void dict_repair(lmp_obj *o) {
  dict *d = (dict *)o;
  table *t;
  uint64_t i;
  int64_t n = 0;
  lmp_off at = atomic_load(&d->batch);
  if (atomic_load(&d->tab) == 0) return;
  t = TAB(d);
  if (at != 0) {
    batch *b = LMP_PTR(at);
    if (!atomic_load(&b->committed)) {
      for (i = atomic_load(&b->done); i-- > 0;)
        t->s[b->r[i].slot].off = b->r[i].old;
      t->used = b->used_was;
    }
    atomic_store(&d->batch, 0);
  }
  for (i = 0; i < t->cap; i++)
    if (t->s[i].off > DELETED) n++;
  atomic_store(&d->count, n);
}

static void dlock(dict *d) { lmp_guard_lock(&d->g, &d->h); }
static void dunlock(dict *d) { lmp_guard_unlock(&d->g); }

/* The slot of key k, or -1; *ins gets where it would go. */
static int64_t find(table *t, const char *k, size_t n, uint64_t h,
                    int64_t *ins) {
  uint64_t i = h & (t->cap - 1), probes;
  int64_t first_free = -1;
  for (probes = 0; probes < t->cap; probes++) {
    slot *s = &t->s[i];
    if (s->off == EMPTY) {
      if (ins) *ins = first_free >= 0 ? first_free : (int64_t)i;
      return -1;
    }
    if (s->off == DELETED) {
      if (first_free < 0) first_free = (int64_t)i;
    } else if (s->hash == h) {
      entry *e = LMP_PTR(s->off);
      if (e->klen == n && memcmp(KEY(e), k, n) == 0) return (int64_t)i;
    }
    i = (i + 1) & (t->cap - 1);
  }
  if (ins) *ins = first_free;
  return -1;
}

/* Rebuilds the table to fit `want` live entries; -ENOMEM. */
static int resize(dict *d, uint64_t want) {
  table *t = atomic_load(&d->tab) ? TAB(d) : NULL, *nt;
  uint64_t cap = MINCAP, i;
  while (cap * 3 < want * 4 + 4) cap *= 2;
  nt = lmp_alloc_pending(&d->h, sizeof(table) + cap * sizeof(slot),
                         LMP_PEND_NEW);
  if (nt == NULL) return -ENOMEM;
  memset(nt->s, 0, cap * sizeof(slot));
  nt->cap = cap;
  nt->used = 0;
  for (i = 0; t != NULL && i < t->cap; i++) {
    uint64_t j;
    if (t->s[i].off <= DELETED) continue;
    j = t->s[i].hash & (cap - 1);
    while (nt->s[j].off != EMPTY) j = (j + 1) & (cap - 1);
    nt->s[j] = t->s[i];
    nt->used++;
  }
  lmp_publish(&d->h, &d->tab, nt);
  return 0;
}

/* Does the dict own block blk (an entry in a slot, or its table)? */
static int owns_locked(lmp_obj *o, lmp_off blk) {
  dict *d = (dict *)o;
  table *t;
  uint64_t i;
  if (atomic_load(&d->tab) == 0) return 0; /* still being made */
  t = TAB(d);
  if (LMP_OFF(t) == blk) return 1;
  for (i = 0; i < t->cap; i++)
    if (t->s[i].off == blk) return 1;
  return 0;
}

/* Run again after a kill cut it short, it finishes the job: each entry
 * is freed with the slot's word that names it, then the table with the
 * dict's. */
static void dict_dtor(lmp_obj *o) {
  dict *d = (dict *)o;
  table *t;
  uint64_t i;
  if (atomic_load(&d->tab) != 0) { /* 0: never made whole, or freed */
    t = TAB(d);
    for (i = 0; i < t->cap; i++) {
      if (t->s[i].off > DELETED) {
        entry *e = LMP_PTR(t->s[i].off);
        lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
        lmp_heap_free(e, &t->s[i].off);
      }
    }
    lmp_heap_free(t, (lmp_off *)&d->tab);
  }
  lmp_guard_destroy(&d->g);
}

/* Takes entry e out of slot i (e leaving, LMP_PEND_OUT, before the store
 * that commits it), the guard held; `now` replaces it (DELETED, or a new
 * entry registered as LMP_PEND_IN, which the commit makes the dict's).
 * The count is the caller's. */
static void take_out(dict *d, table *t, int64_t i, entry *e, lmp_off now) {
  lmp_pending_set(&d->h, e, LMP_PEND_OUT);
  t->s[i].off = now; /* the commit */
  if (now != DELETED) lmp_pending_clear(LMP_PEND_IN);
}

/* Unlocks d and drops entry e, taken out with take_out. */
static void drop_unlock(dict *d, entry *e) {
  dunlock(d);
  lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
  lmp_free_pending(e, LMP_PEND_OUT);
}

/* Frees entry e, with its references, and zeroes the word *at that names
 * it (a batch's) in the same heap operation. */
static void free_entry_at(entry *e, lmp_off *at) {
  lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
  lmp_heap_free(e, at);
}

/* Frees the entries of batch b that the dict does not own: the new ones
 * (field e) or, once committed, the ones they replaced (field old); each
 * with the word that names it, so that a run cut short can be run
 * again.  A reaper's release (dead) drops the references each counts. */
static void batch_free(batch *b, int dead) {
  int committed = (int)atomic_load(&b->committed);
  uint64_t i;
  for (i = 0; i < b->n; i++) {
    lmp_off *at = committed ? &b->r[i].old : &b->r[i].e;
    entry *e;
    if (*at <= DELETED) continue;
    e = LMP_PTR(*at);
    if (dead) {
      if (e->pad == ENTRY_MAGIC)
        lmp_msg_release_counted(VAL(e), e->vlen, atomic_load(&e->refs));
      lmp_heap_free(e, at);
    } else {
      free_entry_at(e, at);
    }
  }
}

/* A pending entry freed by a reaper: its references go with it; a
 * batch's entries that the dict does not own go with it. */
static void dict_release(lmp_obj *o, lmp_off blk) {
  entry *e = LMP_PTR(blk);
  (void)o;
  if (e->pad == ENTRY_MAGIC)
    lmp_msg_release_counted(VAL(e), e->vlen, atomic_load(&e->refs));
  else if (atomic_load(&((batch *)e)->magic) == BATCH_MAGIC)
    batch_free((batch *)e, 1);
}

/* ----------------------------------------------------------------- keys */

/* A key as bytes: a type byte ('s', 'i', 'f', 'b'), then the string, the
 * 8 bytes of the number, or the boolean byte, with its hash.  Floats with
 * an integer value are integers, as table keys are. */
#define KEY_SMALL 64

typedef struct key {
  const char *p;
  size_t n;
  uint64_t h;
  char small[KEY_SMALL]; /* the bytes of a short key */
} key;

/* Reads the key at idx into k: its bytes are in k itself, or for a long
 * string in a string pushed on the stack; raises argument arg's error for
 * a value that cannot be a key (naming it a key of the table at arg when
 * intable). */
static void getkey(lua_State *L, int idx, int arg, int intable, key *k) {
  const char *in = intable ? "key " : "";
  char *small = k->small;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      luaL_Buffer b;
      if (n < KEY_SMALL) {
        small[0] = 's';
        memcpy(small + 1, s, n);
        k->p = small;
        k->n = n + 1;
        k->h = hashkey(k->p, k->n);
        return;
      }
      luaL_buffinit(L, &b);
      luaL_addchar(&b, 's');
      luaL_addlstring(&b, s, n);
      luaL_pushresult(&b);
      k->p = lua_tolstring(L, -1, &k->n); /* kept alive on the stack */
      k->h = hashkey(k->p, k->n);
      return;
    }
    case LUA_TNUMBER: {
      int isint;
      lua_Integer i = lua_tointegerx(L, idx, &isint);
      if (isint) {
        small[0] = 'i';
        memcpy(small + 1, &i, 8);
      } else {
        lua_Number f = lua_tonumber(L, idx);
        if (f != f)
          luaL_argerror(L, arg, "key is NaN");
        small[0] = 'f';
        memcpy(small + 1, &f, 8);
      }
      k->n = 9;
      break;
    }
    case LUA_TBOOLEAN:
      small[0] = 'b';
      small[1] = (char)lua_toboolean(L, idx);
      k->n = 2;
      break;
    default:
      luaL_argerror(L, arg, lua_pushfstring(L, "%sstring, number or boolean "
                    "expected, got %s", in, luaL_typename(L, idx)));
  }
  k->p = small;
  k->h = hashkey(k->p, k->n);
}

static void pushkey(lua_State *L, const char *p, size_t n) {
  lua_Integer i;
  lua_Number f;
  switch (p[0]) {
    case 's': lua_pushlstring(L, p + 1, n - 1); break;
    case 'i': memcpy(&i, p + 1, 8); lua_pushinteger(L, i); break;
    case 'f': memcpy(&f, p + 1, 8); lua_pushnumber(L, f); break;
    default: lua_pushboolean(L, p[1]); break;
  }
}

/* -------------------------------------------------------------- the core */

/* Copies the value of key k into b, holding what it names (*held); 1 if
 * the key exists, -ENOMEM. */
static int lookup(dict *d, key *k, lmp_buf *b, size_t *held) {
  table *t;
  int64_t i;
  int found = 0;
  dlock(d);
  t = TAB(d);
  i = find(t, k->p, k->n, k->h, NULL);
  if (i >= 0) {
    entry *e = LMP_PTR(t->s[i].off);
    b->len = 0;
    if (lmp_buf_reserve(b, e->vlen) == 0) {
      memcpy(b->data, VAL(e), e->vlen);
      b->len = e->vlen;
      found = lmp_hold_copy(&e->refs, b->data, b->len, held) < 0 ? -ENOMEM
                                                                   : 1;
    } else {
      found = -ENOMEM;
    }
  }
  dunlock(d);
  return found;
}

/* The bytes an entry for a key of kn bytes and a value of vn takes. */
static size_t entry_size(size_t kn, size_t vn) {
  return sizeof(entry) + ((kn + 7) & ~(size_t)7) + vn;
}

/* Fills new entry e (its first 16 bytes zeroed by the heap) with key
 * [k, k+kn) and the message [v, v+vn), its magic last: a reaper that
 * finds the magic finds the count of references, 0 until the entry takes
 * them. */
static void fill_entry(entry *e, const char *k, size_t kn, const char *v,
                       size_t vn) {
  atomic_store(&e->refs, 0);
  e->klen = (uint32_t)kn;
  e->vlen = vn;
  memcpy(e->data, k, kn);
  memcpy((char *)VAL(e), v, vn);
  atomic_signal_fence(memory_order_release); /* (a kill is a signal) */
  e->pad = ENTRY_MAGIC;
}

/* A new entry for key k and the message [v, v+vn) (encoded without taking
 * references), registered as LMP_PEND_IN; then the entry takes them.
 * Raises when the arena is exhausted. */
static entry *newentry(lua_State *L, dict *d, key *k, const char *v,
                       size_t vn, size_t nobj) {
  size_t size = entry_size(k->n, vn);
  entry *e = lmp_alloc_pending(&d->h, size, LMP_PEND_IN);
  if (e == NULL) lmp_nomem(L, size);
  fill_entry(e, k->p, k->n, v, vn);
  if (nobj > 0) lmp_msg_retain_counted(VAL(e), vn, &e->refs);
  return e;
}

/* Lets go of a new entry that did not go in. */
static void discard(entry *e) {
  lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
  lmp_free_pending(e, LMP_PEND_IN);
}

enum { SET_ALWAYS, SET_IF_ABSENT };

/* Puts entry e in a free slot for key k, growing the table first if need
 * be; the caller holds the guard and knows k is absent.  0 or -ENOMEM. */
static int insert_locked(dict *d, key *k, entry *e) {
  table *t = TAB(d);
  int64_t ins = -1;
  find(t, k->p, k->n, k->h, &ins);
  if ((t->used + 1) * 4 > t->cap * 3 || ins < 0) {
    if (resize(d, (uint64_t)atomic_load(&d->count) + 1) < 0) return -ENOMEM;
    t = TAB(d);
    find(t, k->p, k->n, k->h, &ins);
  }
  if (t->s[ins].off == EMPTY) t->used++;
  t->s[ins].hash = k->h;
  t->s[ins].off = LMP_OFF(e); /* the commit */
  atomic_fetch_add(&d->count, 1);
  lmp_pending_clear(LMP_PEND_IN);
  return 0;
}

/* Stores entry e under key k, replacing the entry at slot i (i >= 0) or
 * inserting it (i < 0); the caller holds the guard, which this releases.
 * 0 or -ENOMEM (e discarded). */
static int put_unlock(dict *d, key *k, int64_t i, entry *e) {
  if (i >= 0) {
    table *t = TAB(d);
    entry *old = LMP_PTR(t->s[i].off);
    take_out(d, t, i, old, LMP_OFF(e));
    drop_unlock(d, old);
    return 0;
  }
  if (insert_locked(d, k, e) < 0) {
    dunlock(d);
    discard(e);
    return -ENOMEM;
  }
  dunlock(d);
  return 0;
}

/* Stores entry e under key k (mode SET_IF_ABSENT: only if k is absent).
 * Returns 1 when stored, 0 when not (e freed), -ENOMEM. */
static int store(dict *d, key *k, entry *e, int mode) {
  int64_t i;
  int rc;
  dlock(d);
  i = find(TAB(d), k->p, k->n, k->h, NULL);
  if (i >= 0 && mode == SET_IF_ABSENT) {
    dunlock(d);
    discard(e);
    return 0;
  }
  rc = put_unlock(d, k, i, e);
  return rc < 0 ? rc : 1;
}

/* Removes key k; 1 if it was there. */
static int delete(dict *d, key *k) {
  table *t;
  int64_t i;
  entry *e;
  dlock(d);
  t = TAB(d);
  i = find(t, k->p, k->n, k->h, NULL);
  if (i < 0) {
    dunlock(d);
    return 0;
  }
  e = LMP_PTR(t->s[i].off);
  take_out(d, t, i, e, DELETED);
  atomic_fetch_sub(&d->count, 1);
  drop_unlock(d, e);
  return 1;
}

/* -------------------------------------------------------------- binding */

static dict *checkdict(lua_State *L, lmp_bufhandle **hp) {
  dict *d = (dict *)lmp_checkobj(L, 1);
  if (hp != NULL) *hp = lua_touserdata(L, 1);
  return d;
}

/* Sets the value at vidx under the key at kidx (nil deletes); arg and
 * intable name the key in errors.  Returns what store or delete did. */
static int set_value(lua_State *L, dict *d, lmp_bufhandle *h, int kidx,
                     int vidx,
                     int arg, int intable, int mode) {
  key k;
  entry *e;
  size_t nobj;
  int rc;
  lmp_buf *b;
  getkey(L, kidx, arg, intable, &k);
  if (lua_isnil(L, vidx)) return delete(d, &k);
  b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  nobj = lmp_encode_bare(L, vidx, "value", b);
  e = newentry(L, d, &k, b->data, b->len, nobj);
  lmp_buf_unclaim(b);
  rc = store(d, &k, e, mode);
  if (rc < 0) return lmp_nomem(L, 0);
  return rc;
}

/* Pushes the value of the key at kidx and returns 1, or returns 0 when it
 * is absent.  nil and NaN are absent, as from a table: no key is either. */
static int push_lookup(lua_State *L, dict *d, lmp_bufhandle *h, int kidx) {
  key k;
  int rc, top = lua_gettop(L);
  lmp_buf *b;
  size_t held = 0;
  if (lua_isnil(L, kidx) ||
      (lua_type(L, kidx) == LUA_TNUMBER && !lua_isinteger(L, kidx) &&
       lua_tonumber(L, kidx) != lua_tonumber(L, kidx)))
    return 0;
  getkey(L, kidx, 2, 0, &k);
  b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  rc = lookup(d, &k, b, &held);
  lua_settop(L, top); /* the key's bytes, if getkey pushed them */
  if (rc > 0) lmp_held_decode(L, b->data, b->len, held);
  lmp_buf_unclaim(b);
  if (rc < 0) return lmp_nomem(L, 0);
  return rc > 0;
}

/* d[k] for a key that names no method (d.get is the method, d:get("get")
 * the value stored under "get"). */
static int dict_field(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  return push_lookup(L, d, h, 2);
}

/* d[k] = v; nil deletes */
static int dict_newindex(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  set_value(L, d, h, 2, 3, 2, 0, SET_ALWAYS);
  return 0;
}

/* get(k, [default]) */
static int dict_get(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  luaL_checkany(L, 2);
  lua_settop(L, 3); /* the default is 3; the key's bytes go above */
  if (push_lookup(L, d, h, 2) == 0) lua_settop(L, 3);
  return 1;
}

/* add(k, v) -> true if k was absent and is now v */
static int dict_add(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  luaL_checkany(L, 3);
  if (lua_isnil(L, 3)) { /* nil is no value: there is nothing to add */
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, set_value(L, d, h, 2, 3, 2, 0, SET_IF_ABSENT) == 1);
  return 1;
}

/* setdefault(k, v) -> the value of k, set to v first if it was absent */
static int dict_setdefault(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  lua_settop(L, 3);
  if (!lua_isnil(L, 3)) set_value(L, d, h, 2, 3, 2, 0, SET_IF_ABSENT);
  return push_lookup(L, d, h, 2);
}

/* pop(k, [default]) -> the value removed; raises without a default when
 * k is absent, as Python does. */
static int dict_pop(lua_State *L) {
  dict *d = checkdict(L, NULL);
  int n = lua_gettop(L);
  key k;
  table *t;
  int64_t i;
  entry *e;
  luaL_checkany(L, 2);
  getkey(L, 2, 2, 0, &k);
  dlock(d);
  t = TAB(d);
  i = find(t, k.p, k.n, k.h, NULL);
  if (i < 0) {
    dunlock(d);
    if (n >= 3) {
      lua_pushvalue(L, 3);
      return 1;
    }
    return luaL_error(L, "key %s not found", luaL_tolstring(L, 2, NULL));
  }
  e = LMP_PTR(t->s[i].off);
  take_out(d, t, i, e, DELETED);
  atomic_fetch_sub(&d->count, 1);
  dunlock(d);
  /* The entry keeps its references while its value is decoded. */
  lmp_take_decode(L, VAL(e), e->vlen, e, &e->refs);
  return 1;
}

static int pushkey_p(lua_State *L) {
  entry *e = lua_touserdata(L, 1);
  pushkey(L, KEY(e), e->klen);
  return 1;
}

/* popitem() -> k, v: takes an item out (any one), as one step; raises
 * when d is empty, as Python does. */
static int dict_popitem(lua_State *L) {
  dict *d = checkdict(L, NULL);
  table *t;
  uint64_t i;
  entry *e;
  dlock(d);
  t = TAB(d);
  for (i = t->cap; i > 0 && t->s[i - 1].off <= DELETED; i--) continue;
  if (i == 0) {
    dunlock(d);
    return luaL_error(L, "popitem(): dictionary is empty");
  }
  e = LMP_PTR(t->s[i - 1].off);
  take_out(d, t, (int64_t)i - 1, e, DELETED);
  atomic_fetch_sub(&d->count, 1);
  dunlock(d);
  lua_pushcfunction(L, pushkey_p);
  lua_pushlightuserdata(L, e);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) { /* out of memory: e goes */
    lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
    lmp_free_pending(e, LMP_PEND_OUT);
    return lua_error(L);
  }
  lmp_take_decode(L, VAL(e), e->vlen, e, &e->refs);
  return 2;
}

/* incr(k, n, [init]) -> the new value: atomically adds n to the number
 * stored under k (init, if given, stands for an absent value). */
static int dict_incr(lua_State *L) {
  dict *d;
  key k;
  int isint, initint = 0, kind;
  lua_Integer di = 0, ii = 0, vi = 0;
  lua_Number df = 0, fi = 0, vf = 0;
  char msg[16];
  size_t mn;
  int64_t i;
  lua_settop(L, 4); /* arguments first: the key's bytes go above them */
  d = checkdict(L, NULL);
  luaL_checkany(L, 2);
  isint = lua_isinteger(L, 3);
  luaL_checknumber(L, 3);
  if (isint) di = lua_tointeger(L, 3);
  else df = lua_tonumber(L, 3);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checknumber(L, 4);
    initint = lua_isinteger(L, 4);
    if (initint) ii = lua_tointeger(L, 4);
    else fi = lua_tonumber(L, 4);
  }
  getkey(L, 2, 2, 0, &k);
  /* The new entry is made under the guard: its value depends on the old. */
  dlock(d);
  i = find(TAB(d), k.p, k.n, k.h, NULL);
  if (i >= 0) {
    entry *old = LMP_PTR(TAB(d)->s[i].off);
    kind = lmp_msg_number(VAL(old), old->vlen, &vi, &vf);
    if (kind == 0) {
      dunlock(d);
      return luaL_error(L, "cannot increment key %s: its value is not a "
                        "number", luaL_tolstring(L, 2, NULL));
    }
  } else if (!lua_isnoneornil(L, 4)) {
    kind = initint ? 1 : 2;
    vi = ii;
    vf = fi;
  } else {
    dunlock(d);
    return luaL_error(L, "key %s not found (incr takes an initial value "
                      "as its third argument)", luaL_tolstring(L, 2, NULL));
  }
  if (kind == 1 && isint) { /* integers wrap, as Lua's do */
    vi = (lua_Integer)((lua_Unsigned)vi + (lua_Unsigned)di);
  } else {
    vf = (kind == 1 ? (lua_Number)vi : vf) + (isint ? (lua_Number)di : df);
    kind = 2;
  }
  mn = lmp_msg_put_number(msg, kind == 1, vi, vf);
  {
    entry *e = lmp_alloc_pending(&d->h, entry_size(k.n, mn), LMP_PEND_IN);
    if (e == NULL) {
      dunlock(d);
      return lmp_nomem(L, entry_size(k.n, mn));
    }
    fill_entry(e, k.p, k.n, msg, mn);
    if (put_unlock(d, &k, i, e) < 0) return lmp_nomem(L, 0);
  }
  if (kind == 1) lua_pushinteger(L, vi);
  else lua_pushnumber(L, vf);
  return 1;
}

/* Lets go of what the values of a snapshot's records from pos on hold:
 * each record is its key's length (4 bytes), how many objects its value
 * holds (4), its value's length (8), the key and the value. */
static void unhold_records(lmp_buf *b, size_t pos) {
  while (pos < b->len) {
    uint32_t klen, held;
    uint64_t vlen;
    memcpy(&klen, b->data + pos, 4);
    memcpy(&held, b->data + pos + 4, 4);
    memcpy(&vlen, b->data + pos + 8, 8);
    lmp_msg_unhold(b->data + pos + 16 + klen, (size_t)vlen, held);
    pos += 16 + klen + vlen;
  }
}

/* A snapshot of the keys (or keys and values), copied out under the guard
 * into a C buffer (nothing there can raise), then built into a table.
 * what: 0 keys, 1 values, 2 items {k, v}, 3 a table k -> v. */
static int snapshot(lua_State *L, dict *d, int what) {
  lmp_buf *b = lmp_buf_new(L);
  table *t;
  uint64_t i;
  size_t pos;
  lua_Integer n = 0;
  int full = 0;
  uint32_t held32;
  dlock(d);
  t = TAB(d);
  for (i = 0; i < t->cap && !full; i++) {
    entry *e;
    uint64_t vlen;
    if (t->s[i].off <= DELETED) continue;
    e = LMP_PTR(t->s[i].off);
    vlen = what > 0 ? e->vlen : 0;
    if (lmp_buf_reserve(b, 16 + e->klen + vlen) < 0) {
      full = 1;
      break;
    }
    memcpy(b->data + b->len, &e->klen, 4);
    memcpy(b->data + b->len + 8, &vlen, 8);
    memcpy(b->data + b->len + 16, KEY(e), e->klen);
    memcpy(b->data + b->len + 16 + e->klen, VAL(e), vlen);
    if (vlen > 0) {
      size_t held;
      if (lmp_hold_copy(&e->refs, b->data + b->len + 16 + e->klen, vlen,
                        &held) < 0) {
        full = 1;
        break;
      }
      held32 = (uint32_t)held; /* (a message names under 2^32 objects) */
    } else {
      held32 = 0;
    }
    memcpy(b->data + b->len + 4, &held32, 4);
    b->len += 16 + e->klen + vlen;
  }
  dunlock(d);
  if (full) {
    unhold_records(b, 0);
    return luaL_error(L, "not enough memory");
  }
  lua_newtable(L);
  for (pos = 0; pos < b->len;) {
    uint32_t klen;
    uint64_t vlen;
    memcpy(&klen, b->data + pos, 4);
    memcpy(&held32, b->data + pos + 4, 4);
    memcpy(&vlen, b->data + pos + 8, 8);
    n++;
    if (what != 1) pushkey(L, b->data + pos + 16, klen);
    if (what > 0) {
      if (lmp_held_decode_status(L, b->data + pos + 16 + klen, (size_t)vlen,
                                 held32) != LUA_OK) {
        unhold_records(b, pos + 16 + klen + vlen);
        return lua_error(L);
      }
    }
    if (what == 0 || what == 1) {
      lua_rawseti(L, -2, n);
    } else if (what == 2) {
      lua_createtable(L, 2, 0);
      lua_insert(L, -3);
      lua_rawseti(L, -3, 2);
      lua_rawseti(L, -2, 1);
      lua_rawseti(L, -2, n);
    } else {
      lua_rawset(L, -3);
    }
    pos += 16 + klen + vlen;
  }
  return 1;
}

static int dict_keys(lua_State *L) {
  return snapshot(L, checkdict(L, NULL), 0);
}
static int dict_values(lua_State *L) {
  return snapshot(L, checkdict(L, NULL), 1);
}
static int dict_items(lua_State *L) {
  return snapshot(L, checkdict(L, NULL), 2);
}
static int dict_totable(lua_State *L) {
  return snapshot(L, checkdict(L, NULL), 3);
}

/* pairs(d): over a snapshot of the keys (upvalue 1), each value read when
 * reached (keys deleted meanwhile are skipped).  Upvalue 2 is the
 * position, 3 the dict's handle. */
static int dict_next(lua_State *L) {
  lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
  lmp_bufhandle *h = lua_touserdata(L, lua_upvalueindex(3));
  if (h->h.obj == NULL) return luaL_error(L, "attempt to use a closed dict");
  for (;;) {
    i++;
    if (lua_rawgeti(L, lua_upvalueindex(1), i) == LUA_TNIL) return 0;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    if (push_lookup(L, (dict *)h->h.obj, h, lua_gettop(L)) == 1) return 2;
    lua_pop(L, 1); /* the key */
  }
}

static int dict_pairs(lua_State *L) {
  dict *d = checkdict(L, NULL);
  lua_settop(L, 1);
  snapshot(L, d, 0);
  lua_remove(L, 2); /* the buffer */
  lua_pushinteger(L, 0);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, dict_next, 3);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int dict_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&checkdict(L, NULL)->count));
  return 1;
}

/* The pairs of the table at t encoded into b, one record each: the key's
 * length (8 bytes), the value's (8), how many objects the value names
 * (8), the key's hash (8), the key and the value.  Raises, naming the key
 * or the value's path, for a pair that cannot be stored.  Returns how
 * many there are. */
static uint64_t encode_pairs(lua_State *L, int t, lmp_buf *b) {
  uint64_t n = 0;
  int top = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) { /* key at top + 1, value at top + 2 */
    key k;
    size_t at = b->len;
    uint64_t h[4];
    getkey(L, top + 1, t, 1, &k);
    if (lmp_buf_reserve(b, 32 + k.n) < 0) luaL_error(L, "not enough memory");
    memcpy(b->data + at + 32, k.p, k.n);
    b->len += 32 + k.n;
    h[0] = k.n;
    h[3] = k.h;
    lua_settop(L, top + 2); /* the key's bytes, if getkey pushed them */
    h[2] = lmp_encode_bare_item(L, top + 2, top + 1, "value", b);
    h[1] = b->len - at - 32 - k.n;
    memcpy(b->data + at, h, 32);
    lua_settop(L, top + 1);
    n++;
  }
  return n;
}

/* A batch pending as LMP_PEND_IN for d, of the n pairs recorded in b,
 * each a new entry holding its references; NULL when the arena is
 * exhausted (nothing is left made). */
static batch *make_batch(dict *d, lmp_buf *b, uint64_t n) {
  batch *bt = lmp_alloc_pending(&d->h, sizeof(batch) + n * sizeof(brec),
                                LMP_PEND_IN);
  size_t pos = 0;
  uint64_t i;
  if (bt == NULL) return NULL;
  memset(bt->r, 0, n * sizeof(brec));
  bt->n = n;
  bt->used_was = 0;
  atomic_store(&bt->done, 0);
  atomic_store(&bt->committed, 0);
  atomic_store(&bt->magic, BATCH_MAGIC); /* after n and r[] */
  for (i = 0; i < n; i++) {
    uint64_t h[4];
    const char *k;
    entry *e;
    memcpy(h, b->data + pos, 32);
    k = b->data + pos + 32;
    e = lmp_alloc_at(entry_size(h[0], h[1]), &bt->r[i].e);
    if (e == NULL) {
      batch_free(bt, 0);
      lmp_free_pending(bt, LMP_PEND_IN);
      return NULL;
    }
    bt->r[i].hash = h[3];
    fill_entry(e, k, h[0], k + h[0], h[1]);
    if (h[2] > 0) lmp_msg_retain_counted(VAL(e), h[1], &e->refs);
    pos += 32 + h[0] + h[1];
  }
  return bt;
}

/* Puts the entries of batch bt in their slots, as one change (see the top
 * of the file); the caller holds the guard.  The entries they replace are
 * left to the batch.  0, or -ENOMEM with nothing changed. */
static int link_batch(dict *d, batch *bt) {
  table *t = TAB(d);
  uint64_t i, fresh = 0;
  int64_t added = 0;
  /* Room for them all, or else for the keys not there, which take slots */
  for (i = 0; (t->used + bt->n) * 4 > t->cap * 3 && i < bt->n; i++) {
    entry *e = LMP_PTR(bt->r[i].e);
    if (find(t, KEY(e), e->klen, bt->r[i].hash, NULL) < 0) fresh++;
  }
  if ((t->used + fresh) * 4 > t->cap * 3) {
    if (resize(d, (uint64_t)atomic_load(&d->count) + fresh) < 0)
      return -ENOMEM;
    t = TAB(d);
  }
  bt->used_was = t->used;
  atomic_store(&d->batch, LMP_OFF(bt)); /* the journal opens */
  for (i = 0; i < bt->n; i++) {
    entry *e = LMP_PTR(bt->r[i].e);
    int64_t ins = -1, j = find(t, KEY(e), e->klen, bt->r[i].hash, &ins);
    if (j < 0) {
      j = ins;
      added++;
    }
    bt->r[i].slot = (uint64_t)j;
    bt->r[i].old = t->s[j].off;
    atomic_store(&bt->done, i + 1); /* recorded before the slot changes */
    if (t->s[j].off == EMPTY) t->used++;
    t->s[j].hash = bt->r[i].hash;
    t->s[j].off = bt->r[i].e;
  }
  atomic_fetch_add(&d->count, added);
  atomic_store(&bt->committed, 1); /* the commit */
  atomic_store(&d->batch, 0);
  return 0;
}

/* Sets every pair of the table at t, as one change: all of them or, on
 * an error, none. */
static void update(lua_State *L, dict *d, lmp_bufhandle *h, int t) {
  lmp_buf *b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  uint64_t n = encode_pairs(L, t, b);
  batch *bt;
  int rc;
  if (n == 0) {
    lmp_buf_unclaim(b);
    return;
  }
  bt = make_batch(d, b, n);
  lmp_buf_unclaim(b);
  if (bt == NULL) lmp_nomem(L, 0);
  dlock(d);
  rc = link_batch(d, bt);
  dunlock(d);
  batch_free(bt, 0); /* the entries replaced, or on an error the new */
  lmp_free_pending(bt, LMP_PEND_IN);
  if (rc < 0) lmp_nomem(L, 0);
}

static const lmp_class dict_class;

/* update(t or Dict): a Dict's pairs are those of a snapshot of it */
static int dict_update(lua_State *L) {
  lmp_bufhandle *h;
  dict *d = checkdict(L, &h);
  lmp_snapshot(L, 2, &dict_class);
  luaL_argexpected(L, lua_type(L, 2) == LUA_TTABLE, 2, "table or Dict");
  update(L, d, h, 2);
  return 0;
}

/* Takes every entry out of d as one change, through a batch whose
 * records replace each entry by DELETED (the journal of an update: a
 * kill before the commit has the next locker put the entries back, and
 * once committed the entries are the batch's to free); NULL, with
 * nothing changed, when the arena has no room for the batch.  The guard
 * is held. */
static batch *clear_batch(dict *d) {
  table *t = TAB(d);
  uint64_t i, n = 0;
  batch *bt;
  for (i = 0; i < t->cap; i++)
    if (t->s[i].off > DELETED) n++;
  if (n == 0) return NULL;
  bt = lmp_alloc_pending(&d->h, sizeof(batch) + n * sizeof(brec),
                         LMP_PEND_IN);
  if (bt == NULL) return NULL;
  bt->zero = 0;
  bt->n = n;
  bt->used_was = t->used;
  atomic_store(&bt->done, 0);
  atomic_store(&bt->committed, 0);
  for (i = 0, n = 0; i < t->cap; i++) {
    if (t->s[i].off <= DELETED) continue;
    bt->r[n].e = DELETED;
    bt->r[n].old = t->s[i].off;
    bt->r[n].slot = i;
    bt->r[n].hash = t->s[i].hash;
    n++;
  }
  atomic_store(&bt->magic, BATCH_MAGIC); /* after n and r[] */
  atomic_store(&d->batch, LMP_OFF(bt));  /* the journal opens */
  for (i = 0; i < n; i++) {
    atomic_store(&bt->done, i + 1); /* recorded before the slot changes */
    t->s[bt->r[i].slot].off = DELETED;
  }
  atomic_store(&d->count, 0);
  atomic_store(&bt->committed, 1); /* the commit */
  atomic_store(&d->batch, 0);
  return bt;
}

/* clear(): every key goes as one change, all or none for a kill too (see
 * clear_batch), and so does the table the dict grew to; the entries are
 * freed after the guard is let go.  Without the memory for the batch,
 * they go one by one under the guard. */
static int dict_clear(lua_State *L) {
  dict *d = checkdict(L, NULL);
  table *t;
  uint64_t i;
  batch *bt;
  dlock(d);
  bt = clear_batch(d);
  t = TAB(d);
  /* #d reads the count without the guard: it goes to 0 at once, and the
   * entries follow (a process killed among them leaves the next locker a
   * recount). */
  atomic_store(&d->count, 0);
  for (i = 0; bt == NULL && i < t->cap; i++) { /* no batch: one by one */
    entry *e;
    if (t->s[i].off <= DELETED) continue;
    e = LMP_PTR(t->s[i].off);
    take_out(d, t, (int64_t)i, e, DELETED);
    lmp_msg_unretain_counted(VAL(e), e->vlen, &e->refs);
    lmp_free_pending(e, LMP_PEND_OUT);
  }
  /* The table it grew to, full of deleted marks, goes too, as Python's
   * clear lets go of its table (without the memory, it stays). */
  (void)resize(d, 0);
  dunlock(d);
  if (bt != NULL) {
    batch_free(bt, 0); /* the entries, now the batch's */
    lmp_free_pending(bt, LMP_PEND_IN);
  }
  return 0;
}

static void dict_describe(lua_State *L, void *h) {
  dict *d = (dict *)((lmp_handle *)h)->obj;
  lua_pushfstring(L, "%I keys", (lua_Integer)atomic_load(&d->count));
}

/* Dict([t or Dict]), Namespace([t or Dict]) */
static int new_dict(lua_State *L, int kind) {
  dict *d;
  lmp_snapshot(L, 1, &dict_class);
  luaL_argexpected(L, lua_isnoneornil(L, 1) || lua_istable(L, 1), 1,
                   "table or Dict");
  d = (dict *)lmp_obj_new(LMP_T_DICT, kind, sizeof(dict));
  if (d == NULL) return lmp_nomem(L, sizeof(dict));
  lmp_guard_init(&d->g);
  if (resize(d, 0) < 0) {
    lmp_obj_discard(&d->h);
    return lmp_nomem(L, sizeof(table));
  }
  lmp_pushnew(L, &d->h);
  if (lua_istable(L, 1)) update(L, d, lua_touserdata(L, -1), 1);
  return 1;
}

static int dict_Dict(lua_State *L) { return new_dict(L, K_DICT); }
static int dict_Namespace(lua_State *L) { return new_dict(L, K_NAMESPACE); }

/* Namespace(a=1, b=x): fields by name, those starting with _ hidden, as
 * Python shows them. */
static int ns_tostring(lua_State *L) {
  luaL_Buffer b;
  lua_Integer i, n, shown = 0;
  dict *d = (dict *)((lmp_handle *)lua_touserdata(L, 1))->obj;
  lua_settop(L, 1);
  snapshot(L, d, 2); /* the buffer at 2; items, {k, v} pairs, at 3 */
  n = luaL_len(L, 3);
  lua_createtable(L, (int)n, 0); /* "k=v" strings, at 4 */
  for (i = 1; i <= n; i++) {
    const char *name;
    lua_rawgeti(L, 3, i);
    lua_rawgeti(L, -1, 1);
    name = luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    if (name[0] == '_') {
      lua_pop(L, 2);
      continue;
    }
    lua_pushliteral(L, "=");
    lua_rawgeti(L, -3, 2);
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    lua_concat(L, 3);
    lua_rawseti(L, 4, ++shown);
    lua_pop(L, 1); /* the pair */
  }
  lua_getglobal(L, "table");
  if (lua_getfield(L, -1, "sort") == LUA_TFUNCTION) {
    lua_pushvalue(L, 4);
    lua_call(L, 1, 0);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "Namespace(");
  for (i = 1; i <= shown; i++) {
    if (i > 1) luaL_addstring(&b, ", ");
    lua_rawgeti(L, 4, i);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}

/* ---------------------------------------------------------------- classes */

static const luaL_Reg dict_meth[] = {
  {"get", dict_get},         {"setdefault", dict_setdefault},
  {"pop", dict_pop},         {"update", dict_update},
  {"keys", dict_keys},       {"values", dict_values},
  {"items", dict_items},     {"clear", dict_clear},
  {"totable", dict_totable}, {"copy", dict_totable},
  {"incr", dict_incr},       {"add", dict_add},
  {"popitem", dict_popitem}, {NULL, NULL}
};

static const luaL_Reg dict_metameth[] = {
  {"__newindex", dict_newindex}, {"__len", dict_len},
  {"__pairs", dict_pairs},       {NULL, NULL}
};

static const lmp_type dict_type = {
  .name = "dict", .dtor = dict_dtor, .guard = offsetof(dict, g),
  .owns = owns_locked, .repair = dict_repair, .release = dict_release,
};

static const lmp_class dict_class = {
  .name = DICT, .what = "dict", .type = LMP_T_DICT, .kind = K_DICT,
  .obj = &dict_type, .size = sizeof(lmp_bufhandle), .nuv = 1, .meth = dict_meth,
  .metameth = dict_metameth, .field = dict_field,
  .bind = lmp_bufhandle_bind,
  .describe = dict_describe,
};

/* A Namespace has fields by name and no methods to shadow them. */
static const lmp_class ns_class = {
  .name = NAMESPACE, .what = "namespace", .type = LMP_T_DICT,
  .kind = K_NAMESPACE, .obj = &dict_type, .size = sizeof(lmp_bufhandle),
  .nuv = 1,
  .metameth = dict_metameth, .field = dict_field,
  .bind = lmp_bufhandle_bind,
  .tostring = ns_tostring,
};

static const lmp_class *const dict_classes[] = {&dict_class, &ns_class, NULL};

static const luaL_Reg dict_funcs[] = {
  {"Dict", dict_Dict}, {"Namespace", dict_Namespace}, {NULL, NULL}
};

const lmp_family lmp_dict_family = {dict_classes, dict_funcs, NULL};
