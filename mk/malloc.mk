# The LD_PRELOAD malloc (issue #7): target/release/libpools_malloc.so.
#   make test-malloc      nm and code-layout checks, C tests under the
#                         preload, fork with -lpools, a -lpools program under
#                         the preload, real programs with and without the
#                         preload, and under a 64 MiB address-space limit
#   make bench-malloc     larson-like benchmark and real programs under glibc,
#                         the preload, jemalloc and mimalloc (BENCHMARKS.md)
#   make bench-malloc-large  only the large-block pattern (bench/large.c)
#   make bench-footprint  peak RSS of real programs (and sqlite3) under glibc
#                         and the preload (bench/footprint.sh)
#   make bench-startup    the preload's fixed cost per process: page faults
#                         and task-clock of seq, true and sqlite3, and what a
#                         sqlite3 session has resident (bench/startup.sh)

MALLOC_SO  := $(CURDIR)/$(REL)/libpools_malloc.so
MT_OUT     := $(CT_OUT)/malloc
# -rdynamic: test_fail_profile finds its functions by name in the profile.
MT_CFLAGS  := $(CFLAGS) -fno-builtin -rdynamic
M_TESTS    := $(basename $(notdir $(wildcard c-tests/malloc/test_*.c)))

.PHONY: test-malloc test-malloc-nm test-malloc-layout test-malloc-c test-malloc-programs test-malloc-limits \
        test-malloc-profile bench-malloc bench-malloc-large bench-footprint bench-startup \
        install-malloc

test-malloc: test-malloc-nm test-malloc-layout test-malloc-c test-malloc-programs test-malloc-limits test-malloc-profile

# libpools.so and libpools.a must not replace a program's malloc.
test-malloc-nm: lib
	@scripts/check-no-malloc-symbols.sh $(REL)/libpools.so $(REL)/libpools.a $(MALLOC_SO)

# The code programs run sits in a hot segment of at most 64 KiB (malloc/build.rs).
test-malloc-layout: lib
	@scripts/check-code-layout.sh $(MALLOC_SO)

test-malloc-c: lib
	@mkdir -p $(MT_OUT)
	@set -e; for t in $(M_TESTS); do \
	  $(CC) $(MT_CFLAGS) c-tests/malloc/$$t.c -o $(MT_OUT)/$$t -ldl; done
	@set -e; for t in test_fork test_fork_atfork lpools_gc; do \
	  $(CC) $(MT_CFLAGS) -DPOOLS c-tests/malloc/$$t.c -o $(MT_OUT)/$${t}_lpools \
	    -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL) -ldl; done
	$(CC) $(MT_CFLAGS) -shared -fPIC c-tests/malloc/early_atfork.c -o $(MT_OUT)/early_atfork.so
	@set -e; for t in $(M_TESTS); do echo "== preload $$t"; \
	  LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/$$t; done
	@echo "== preload POOL_DEBUG=uaf test_conformance"; \
	  POOL_DEBUG=uaf LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/test_conformance
	@echo "== preload POOL_DEBUG=integrity test_conformance (checks every block it hands out)"; \
	  POOL_DEBUG=integrity LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/test_conformance
	@set -e; for t in test_conformance test_stress test_thread_exit test_fork_atfork; do \
	  echo "== preload POOL_DEBUG=canary $$t"; \
	  POOL_DEBUG=canary LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/$$t; done
	@echo "== -lpools test_fork"; timeout 300 $(MT_OUT)/test_fork_lpools
	@echo "== -lpools test_fork_atfork"; timeout 300 $(MT_OUT)/test_fork_atfork_lpools
	@echo "== preload test_fork_atfork, handlers registered before ours"; \
	  EARLY_ATFORK_LIB=1 LD_PRELOAD="$(MALLOC_SO) $(CURDIR)/$(MT_OUT)/early_atfork.so" \
	  timeout 300 $(MT_OUT)/test_fork_atfork
	@echo "== -lpools under the preload, POOL_BACKEND=malloc: lpools_gc"; \
	  POOL_BACKEND=malloc LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/lpools_gc_lpools

test-malloc-programs: lib
	@scripts/malloc-programs.sh $(MALLOC_SO)

# Where glibc's malloc runs them, so does the preload: `ls` and `python3 -c
# pass` under `ulimit -v 65536` (64 MiB of address space), and the preload's
# own limit test (c-tests/malloc/test_limits.c, in test-malloc-c) checks
# that running out gives NULL and ENOMEM.
test-malloc-limits: lib
	@echo "== ulimit -v 65536: ls, python3 -c pass under the preload"
	@(ulimit -v 65536 && LD_PRELOAD=$(MALLOC_SO) ls / > /dev/null && \
	  LD_PRELOAD=$(MALLOC_SO) python3 -c pass) || \
	  { echo "the preload failed under ulimit -v 65536"; exit 1; }

# The memory profile of a real program: python3 under the preload with
# POOL_PROFILE=1 POOL_STATS=1 prints, at exit, call sites inside python.
test-malloc-profile: lib
	@command -v python3 >/dev/null 2>&1 || scripts/apt-install.sh test-malloc-profile python3
	@mkdir -p $(MT_OUT)
	@echo "== preload POOL_PROFILE=1 POOL_STATS=1 python3"
	@POOL_PROFILE=1 POOL_STATS=1 LD_PRELOAD=$(MALLOC_SO) python3 -c \
	  'x = [bytes(100) for _ in range(20000)]; print(len(x))' \
	  >$(MT_OUT)/profile-python.out 2>$(MT_OUT)/profile-python.err
	@grep -q '^20000$$' $(MT_OUT)/profile-python.out && grep -q '^Memory profile: ' $(MT_OUT)/profile-python.err \
	  && grep -Eq 'allocs .* pool=malloc-[0-9]+ at 0x[0-9a-f]+ .*python' $(MT_OUT)/profile-python.err \
	  || { tail -n 40 $(MT_OUT)/profile-python.err; echo "no memory profile of python3"; exit 1; }
	@grep -A6 '^Memory profile: ' $(MT_OUT)/profile-python.err | tail -n 7

bench-malloc: lib bench-deps
	bench/malloc-bench.sh $(MALLOC_SO) $(BENCH_ARGS)

bench-malloc-large: lib bench-deps
	MALLOC_BENCH_ONLY=large bench/malloc-bench.sh $(MALLOC_SO) $(BENCH_ARGS)

bench-footprint: lib
	bench/footprint.sh $(MALLOC_SO) $(BENCH_ARGS)

bench-startup: lib
	bench/startup.sh $(MALLOC_SO) $(BENCH_ARGS)

install-malloc: lib
	install -d $(DESTDIR)$(PREFIX)/lib
	install -m 755 $(REL)/libpools_malloc.so $(DESTDIR)$(PREFIX)/lib/libpools_malloc.so
