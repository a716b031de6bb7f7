/* check.h -- the assertions and the runner that the C tests share.
 *
 * A test is a void function.  check_run() runs a list of them in order and
 * reports each by name as a TAP line, "ok 2 - test_patterns" or "not ok 2
 * - test_patterns", then ends with "N passed, M failed" and returns the
 * program's exit status: 0 when every test passed, 1 otherwise.
 *
 * An ASSERT_* that fails prints where it is, what it checked and both
 * sides ("# test_arena.c:71: ASSERT_EQ(used(), base): 4096 vs 0"), marks
 * the running test failed, and goes on: one wrong value does not hide the
 * next.  A test that cannot go on after a failure returns by itself.
 *
 *   static void test_sum(void) { ASSERT_EQ(1 + 1, 2); }
 *   int main(void) {
 *     static const check_test tests[] = {CHECK(test_sum)};
 *     return check_run(tests, CHECK_COUNT(tests));
 *   }
 *
 * Everything here is static: include it from the one C file of a test
 * program.
 */
#ifndef LUAMP_CHECK_H
#define LUAMP_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct check_test {
  const char *name;
  void (*fn)(void);
} check_test;

/* An entry of the list given to check_run: the function and its name. */
#define CHECK(fn) {#fn, fn}
#define CHECK_COUNT(tests) ((int)(sizeof(tests) / sizeof((tests)[0])))

static int check_failures; /* failed checks in the running test */

/* Records a failed check at file:line with a printf-style message, as a
 * TAP comment on stdout (so that it stays in order with the test lines). */
__attribute__((format(printf, 3, 4), unused)) static void
check_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  const char *base = strrchr(file, '/');
  printf("# %s:%d: ", base ? base + 1 : file, line);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
  check_failures++;
}

#define CHECK_FAIL(...) check_fail(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT_TRUE(c)                                                  \
  do {                                                                  \
    if (!(c)) CHECK_FAIL("ASSERT_TRUE(%s): false", #c);                 \
  } while (0)

#define ASSERT_FALSE(c)                                                 \
  do {                                                                  \
    if (c) CHECK_FAIL("ASSERT_FALSE(%s): true", #c);                    \
  } while (0)

/* Integer comparisons, made on both sides as long long. */
#define CHECK_CMP(name, a, op, b)                                       \
  do {                                                                  \
    long long a_ = (long long)(a), b_ = (long long)(b);                 \
    if (!(a_ op b_))                                                    \
      CHECK_FAIL("%s(%s, %s): %lld vs %lld", name, #a, #b, a_, b_);     \
  } while (0)

#define ASSERT_EQ(a, b) CHECK_CMP("ASSERT_EQ", a, ==, b)
#define ASSERT_NE(a, b) CHECK_CMP("ASSERT_NE", a, !=, b)
#define ASSERT_GE(a, b) CHECK_CMP("ASSERT_GE", a, >=, b)

/* C strings; a NULL on either side fails. */
#define ASSERT_STREQ(a, b)                                              \
  do {                                                                  \
    const char *a_ = (a), *b_ = (b);                                    \
    if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                \
      CHECK_FAIL("ASSERT_STREQ(%s, %s): \"%s\" vs \"%s\"", #a, #b,      \
                 a_ ? a_ : "(null)", b_ ? b_ : "(null)");               \
  } while (0)

/* Runs tests[0..n-1] in order, each reported by name; ends with the line
 * "N passed, M failed".  Returns 0 if none failed, else 1. */
__attribute__((unused)) static int check_run(const check_test *tests,
                                             int n) {
  int i, failed = 0;
  printf("1..%d\n", n);
  fflush(stdout);
  for (i = 0; i < n; i++) {
    check_failures = 0;
    tests[i].fn();
    if (check_failures > 0) failed++;
    printf("%sok %d - %s\n", check_failures > 0 ? "not " : "", i + 1,
           tests[i].name);
    fflush(stdout);
  }
  printf("%d passed, %d failed\n", n - failed, failed);
  fflush(stdout);
  return failed > 0;
}

#endif
