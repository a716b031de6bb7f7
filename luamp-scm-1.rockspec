rockspec_format = "3.0"
package = "luamp"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Python's multiprocessing for Lua 5.4: workers are forks",
  detailed = [[
Process, Queue, Pipe, Pool, locks, shared Value and Array, Manager Dict
and List for Lua 5.4, every worker a fork of the interpreter and shared
objects in a shared-memory arena.  Installs the module for require
"luamp" and the luamp command.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  LIBUV = { header = "uv.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LUAMP_TESTS = "OFF",
    LUAMP_INSTALL_DEV = "OFF",
    LUAMP_INSTALL_CMOD = "$(LIBDIR)",
    CMAKE_INSTALL_BINDIR = "$(BINDIR)",
  },
}
