# The LD_PRELOAD malloc (issue #7): target/release/libpools_malloc.so.
#   make test-malloc      nm check, C tests under the preload, fork with
#                         -lpools, real programs with and without the preload
#   make bench-malloc     larson-like benchmark and real programs under glibc,
#                         the preload, jemalloc and mimalloc (BENCHMARKS.md)

MALLOC_SO  := $(CURDIR)/$(REL)/libpools_malloc.so
MT_OUT     := $(CT_OUT)/malloc
# -rdynamic: test_fail_profile finds its functions by name in the profile.
MT_CFLAGS  := $(CFLAGS) -fno-builtin -rdynamic
M_TESTS    := $(basename $(notdir $(wildcard c-tests/malloc/test_*.c)))

.PHONY: test-malloc test-malloc-nm test-malloc-c test-malloc-programs test-malloc-profile \
        bench-malloc install-malloc

test-malloc: test-malloc-nm test-malloc-c test-malloc-programs test-malloc-profile

# libpools.so and libpools.a must not replace a program's malloc.
test-malloc-nm: lib
	@scripts/check-no-malloc-symbols.sh $(REL)/libpools.so $(REL)/libpools.a $(MALLOC_SO)

test-malloc-c: lib
	@mkdir -p $(MT_OUT)
	@set -e; for t in $(M_TESTS); do \
	  $(CC) $(MT_CFLAGS) c-tests/malloc/$$t.c -o $(MT_OUT)/$$t -ldl; done
	$(CC) $(MT_CFLAGS) -DPOOLS c-tests/malloc/test_fork.c -o $(MT_OUT)/test_fork_lpools \
	  -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL) -ldl
	@set -e; for t in $(M_TESTS); do echo "== preload $$t"; \
	  LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/$$t; done
	@echo "== preload POOL_DEBUG=uaf test_conformance"; \
	  POOL_DEBUG=uaf LD_PRELOAD=$(MALLOC_SO) timeout 300 $(MT_OUT)/test_conformance
	@echo "== -lpools test_fork"; timeout 300 $(MT_OUT)/test_fork_lpools

test-malloc-programs: lib
	@scripts/malloc-programs.sh $(MALLOC_SO)

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

install-malloc: lib
	install -d $(DESTDIR)$(PREFIX)/lib
	install -m 755 $(REL)/libpools_malloc.so $(DESTDIR)$(PREFIX)/lib/libpools_malloc.so
