/* safe.c -- the crash-safety kit (see arena.h): guards that settle what a
 * dead holder left, publishing a new table with one store, and the reaper
 * that frees a dead process's blocks in transit.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "arena.h"

void lmp_guard_init(lmp_guard *g) {
  lmp_robust_init(&g->mu);
  g->holder = 0;
}

void lmp_guard_destroy(lmp_guard *g) { pthread_mutex_destroy(&g->mu); }

/* The process in slot holder-1 died holding o's guard (holder 0: no one
 * known).  The blocks it had pending for o that o owns leave its pending
 * entries now, under the guard, before anyone else can take them; its
 * reaper frees the rest, which were the dead process's alone. */
static void settle(lmp_obj *o, const lmp_type *t, uint32_t holder) {
  lmp_slot *s;
  int k;
  if (holder == 0 || t == NULL || t->owns == NULL) return;
  s = lmp_slot_at(holder - 1);
  if (s->pending_obj != LMP_OFF(o)) return;
  for (k = 0; k < LMP_PEND_MAX; k++) {
    lmp_off blk = s->pending_blk[k];
    if (blk != 0 && t->owns(o, blk)) s->pending_blk[k] = 0;
  }
}

int lmp_guard_lock(lmp_guard *g, lmp_obj *o) {
  int died = lmp_robust_lock(&g->mu);
  if (died) {
    const lmp_type *t = lmp_type_of(o);
    settle(o, t, g->holder);
    g->holder = 0;
    if (t != NULL && t->repair != NULL) t->repair(o);
  }
  g->holder = lmp_self_index + 1;
  return died;
}

void lmp_guard_unlock(lmp_guard *g) {
  g->holder = 0;
  pthread_mutex_unlock(&g->mu);
}

void lmp_publish(lmp_obj *o, _Atomic lmp_off *where, void *fresh) {
  lmp_off old = atomic_load(where);
  if (old != 0) lmp_pending_set(o, LMP_PTR(old), LMP_PEND_OLD);
  atomic_store(where, LMP_OFF(fresh)); /* the commit */
  lmp_pending_clear(LMP_PEND_NEW);
  if (old != 0) lmp_free_pending(LMP_PTR(old), LMP_PEND_OLD);
}

/* Does o still own blk?  Asked under o's guard, whose lock settles what
 * the dead process left if it died holding it. */
static int owns(lmp_obj *o, const lmp_type *t, lmp_off blk) {
  lmp_guard *g;
  int found;
  if (t == NULL || t->owns == NULL) return 0;
  if (t->guard == 0) return t->owns(o, blk);
  g = (lmp_guard *)((char *)o + t->guard);
  lmp_guard_lock(g, o);
  found = t->owns(o, blk);
  lmp_guard_unlock(g);
  return found;
}

/* The slots of the children of the process of slot idx, which ended
 * before them: the kernel kills them with it (PR_SET_PDEATHSIG), and
 * their slots are released once they have (a child still being started,
 * with no pid yet, is left). */
static void release_orphans(uint32_t idx) {
  uint32_t i;
  for (i = 0; i < LMP_MAX_PROCS; i++) {
    lmp_slot *o = lmp_slot_at(i);
    uint32_t st = atomic_load(&o->state);
    if (i == idx || o->parent != idx || st == LMP_SLOT_FREE) continue;
    if (lmp_slot_wait_end(i, 5000)) lmp_slot_release(i);
  }
}

void lmp_slot_release(uint32_t idx) {
  lmp_slot *s = lmp_slot_at(idx);
  int k;
  if (atomic_load(&s->state) == LMP_SLOT_FREE) return;
  if (atomic_load(&s->nkids) > 0) release_orphans(idx);
  if (s->parent == lmp_self_index && lmp_self != NULL &&
      atomic_load(&lmp_self->nkids) > 0)
    atomic_fetch_sub(&lmp_self->nkids, 1);
  /* A wake-up it was handed and can no longer pass on, on its way to a
   * mutex or to a queue's message: every other sleeper looks again. */
  lmp_futex_wake_all(atomic_exchange(&s->lock_wait, 0));
  lmp_futex_wake_all(atomic_exchange(&s->waiting_on, 0));
  /* A wake-up it owed for a change it made (lmp_owe). */
  {
    lmp_off w = atomic_exchange(&s->owed, 0);
    if (w != 0) lmp_futex_bump(LMP_PTR(w), INT_MAX);
  }
  /* Blocks it had in transit: the object they were going to or coming
   * from is still alive (the dead process held it), so ask it.  First let
   * the heap recover, if the process died inside a heap operation. */
  lmp_heap_recover();
  lmp_slot_settle_counting(idx);
  lmp_slot_settle_dying(idx);
  for (k = 0; k < LMP_PEND_MAX; k++) {
    lmp_off blk = s->pending_blk[k];
    lmp_obj *o = s->pending_obj ? LMP_PTR(s->pending_obj) : NULL;
    const lmp_type *t = o != NULL ? lmp_type_of(o) : NULL;
    int owned;
    if (blk == 0) continue;
    owned = owns(o, t, blk);
    if (s->pending_blk[k] == blk && !owned) {
      if (t != NULL && t->release != NULL) t->release(o, blk);
      lmp_free(LMP_PTR(blk));
    }
    s->pending_blk[k] = 0;
  }
  s->pending_obj = 0;
  lmp_slot_free(idx);
}
